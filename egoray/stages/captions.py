"""CoCa stages of the captions job: frame captions (+ image embedding, de-dup) and text embeddings."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.features.captions import CaptionOptions, CocaCaptioner, dedupe_captions
from egoray.models.clip import ClipModel
from egoray.models.sampling import row_seed
from egoray.stages.base import Resources, Stage
from egoray.stages.video import Sampling

FLOATS = pa.list_(pa.float32())


class CaptionStage(Stage):
    """Per video: decode sampled frames (streaming), caption them with CoCa, embed the captions
    with CoCa's text tower to drop near-repeats (time order kept), and average the frames' image
    embeddings. Captioning is seeded per (video, chunk of frames), never by batch position."""

    name = "caption"

    def __init__(self, coca: ClipModel, caption: CaptionOptions, sampling: Sampling, threshold: float,
                 seed: int = 0, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.coca, self.caption_options, self.sampling = coca, caption, sampling
        self.threshold, self.seed = threshold, seed
        self.model: Any = None

    def setup(self) -> None:
        self.model = CocaCaptioner(self.coca, self.caption_options)

    def process(self, rows: pa.Table) -> pa.Table:
        from egoray.video.decode import VideoError

        out: dict[str, list] = {"frame_times": [], "frame_captions": [], "kept_captions": [], "image_embedding": []}
        reasons, details = [], []
        for row in rows.select(["key", "path", "t_start", "t_end"]).to_pylist():
            try:
                with storage.local_copy(row["path"]) as local:
                    times, captions, image = self._caption_video(local, row)
                kept = dedupe_captions(captions, self.model.encode_texts(captions), self.threshold)
                values = (times, captions, [captions[i] for i in kept], image)
                reasons.append(None)
                details.append(None)
            except (VideoError, storage.StorageError) as e:
                values = (None, None, None, None)
                reasons.append(getattr(e, "reason", "unreadable"))
                details.append(str(e)[:500])
            for name, value in zip(out, values, strict=True):
                out[name].append(value)
        types = {"frame_times": pa.list_(pa.float64()), "frame_captions": pa.list_(pa.string()),
                 "kept_captions": pa.list_(pa.string()), "image_embedding": FLOATS}
        for name, values in out.items():
            rows = rows.append_column(name, pa.array(values, types[name]))
        bad = np.array([r is not None for r in reasons])
        return self.reject(rows, bad, [r or "" for r in reasons], [d or "" for d in details])

    def _caption_video(self, local: str, row: dict) -> tuple[list[float], list[str], list[float]]:
        from egoray.video.decode import VideoError, iter_frames, probe, sample_times

        info = probe(local)
        start = row["t_start"] or 0.0
        end = row["t_end"] if row["t_end"] is not None else info.duration
        if end <= start:
            raise VideoError("empty", "zero-length video or window")
        times = sample_times(start, end, rate=self.sampling.fps, num_frames=self.sampling.num_frames)
        captions: list[str] = []
        image_sum, pending = None, []
        frames = (f for _, f in iter_frames(local, times, self.model.size))
        size = self.model.options.batch_size
        for frame in itertools.chain(frames, [None]):
            if frame is not None:
                pending.append(frame)
            if pending and (frame is None or len(pending) == size):
                stack = np.stack(pending)
                captions += self.model.caption(stack, seed=row_seed(self.seed, "caption", row["key"], len(captions))
                                               % 2**31)
                emb = self.model.encode(stack, normalize=True).sum(0)
                image_sum = emb if image_sum is None else image_sum + emb
                pending = []
        image = (image_sum / max(1, len(captions))).astype(np.float32).tolist()
        return times.tolist(), captions, image


class CocaTextStage(Stage):
    """CoCa text-tower embedding of a text column (the same weights as the image embeddings)."""

    name = "embed_summary"

    def __init__(self, coca: ClipModel, text_col: str = "summary", out_col: str = "summary_embedding",
                 resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.coca, self.text_col, self.out_col = coca, text_col, out_col
        self.model: Any = None

    def setup(self) -> None:
        self.model = CocaCaptioner(self.coca, CaptionOptions())

    def process(self, rows: pa.Table) -> pa.Table:
        emb = self.model.encode_texts([t or "" for t in rows[self.text_col].to_pylist()])
        return rows.append_column(self.out_col, pa.array([e.astype(np.float32).tolist() for e in emb], FLOATS))
