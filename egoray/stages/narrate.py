"""Narration: windows to narrate, their video tokens, the narrator stage, and the captions sink.

Windows come from a table (clips, narrations) or tile every video densely; they are grouped by
video so that each video's features are read once (:class:`SampleWindows`). The narrator stage
samples ``n`` captions per window, each with its own seed from (seed, window id, sample).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from egoray import storage
from egoray.config import StrictModel
from egoray.features.windows import FeatureStore, sample
from egoray.models.sampling import row_seed
from egoray.stages.base import Resources, Sink, Stage, mark, with_reject_columns, write_part
from egoray.stages.video import from_npy, to_npy

WINDOWS = pa.schema([("window_id", pa.string()), ("video_uid", pa.string()), ("t_start", pa.float64()),
                     ("t_end", pa.float64())])
CAPTIONS = pa.schema([("caption_id", pa.string()), ("window_id", pa.string()), ("video_uid", pa.string()),
                      ("t_start", pa.float64()), ("t_end", pa.float64()), ("k", pa.int32()), ("text", pa.string()),
                      ("nll", pa.float64()), ("entropy", pa.float64())])


class Sampling(StrictModel):
    n: int = Field(5, ge=1, description="captions per window")
    top_p: float = Field(0.95, gt=0, le=1)
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(20, ge=1)
    do_sample: bool = True
    use_cache: bool = True
    seed: int = 0


class TableWindows:
    """Rows of a window table → ``window_id, video_uid, t_start, t_end`` (widened by ``offset``),
    keeping only ``videos`` when given. The id is the table's ``window_id`` / ``clip_id`` /
    ``narration_id`` column, else ``<video_uid>_<t_start>_<t_end>``."""

    def __init__(self, id_col: str | None, offset: float = 0.0, videos: list[str] | None = None) -> None:
        self.id_col, self.offset = id_col, offset
        self.videos = pa.array(sorted(videos), pa.string()) if videos is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.videos is not None:
            batch = batch.filter(pc.is_in(pc.cast(batch["video_uid"], pa.string()), value_set=self.videos))
        # a window never starts before the video does
        t0 = pc.max_element_wise(pc.subtract(pc.cast(batch["t_start"], pa.float64()), self.offset), 0.0).to_pylist()
        t1 = pc.add(pc.cast(batch["t_end"], pa.float64()), self.offset).to_pylist()
        uids = pc.cast(batch["video_uid"], pa.string()).to_pylist()
        if self.id_col:
            ids = [str(x) for x in batch[self.id_col].to_pylist()]
        else:
            ids = [f"{u}_{a:.3f}_{b:.3f}" for u, a, b in zip(uids, t0, t1, strict=True)]
        return pa.table({"window_id": ids, "video_uid": uids, "t_start": t0, "t_end": t1}, schema=WINDOWS)


def tile(video_uid: str, start: float, end: float, length: float, stride: float) -> list[tuple[str, float, float]]:
    """Dense windows ``length`` long every ``stride`` seconds over ``[start, end]``."""
    out = []
    for s in np.arange(start, max(start + 1e-9, end - length + 1e-9), stride):
        e = min(float(s) + length, end)
        out.append((f"{video_uid}_{s:.3f}_{e:.3f}", float(s), e))
    return out


class DenseWindows:
    """Rows of a feature index (``key, n, fps, t_start``) → dense windows tiling each video.

    ``uncovered``: a narrations table (an ingest output); windows holding or overlapping one of
    its narrations are left out — LaViLa's pseudo-narrations of what people did not narrate. Each
    batch reads the narrations of its own videos only.
    """

    def __init__(self, length: float, stride: float, videos: list[str] | None = None,
                 uncovered: str | None = None) -> None:
        self.length, self.stride = length, stride
        self.videos = set(videos) if videos is not None else None
        self.uncovered = uncovered

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        index = [r for r in batch.select(["key", "n", "fps", "t_start"]).to_pylist()
                 if (self.videos is None or r["key"] in self.videos) and r["fps"]]
        covered = self._narrated([r["key"] for r in index]) if self.uncovered else {}
        for r in index:
            t0 = float(r["t_start"] or 0.0)
            spans = covered.get(r["key"])
            for wid, s, e in tile(r["key"], t0, t0 + r["n"] / r["fps"], self.length, self.stride):
                if spans is not None and ((spans[0] <= e) & (spans[1] >= s)).any():
                    continue
                rows.append({"window_id": wid, "video_uid": r["key"], "t_start": s, "t_end": e})
        return pa.Table.from_pylist(rows, schema=WINDOWS)

    def _narrated(self, videos: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``[t_start, t_end]`` of the narrations of ``videos``, by video."""
        from egoray.data.tables import table_source

        table = storage.read_parquet(table_source(self.uncovered), ["video_uid", "t_start", "t_end"],
                                     [("video_uid", "in", sorted(set(videos)))]) if videos else None
        if table is None:
            return {}
        out: dict[str, tuple[list, list]] = {}
        for uid, a, b in zip(*(table[c].to_pylist() for c in ("video_uid", "t_start", "t_end")), strict=True):
            spans = out.setdefault(uid, ([], []))
            spans[0].append(a)
            spans[1].append(b)
        return {k: (np.array(a, np.float64), np.array(b, np.float64)) for k, (a, b) in out.items()}


class SampleWindows:
    """One video's windows (a ``map_groups`` group) → ``frames``: ``num_frames`` features spread over
    each window (``.npy`` bytes); windows of a video without features are marked ``no_video_features``."""

    def __init__(self, features: str, num_frames: int, stage: str = "features") -> None:
        self.url, self.num_frames, self.stage = features, num_frames, stage
        self.store: FeatureStore | None = None
        self.__name__ = type(self).__name__  # Ray Data names a map_groups operator after its function

    def __call__(self, group: pa.Table) -> pa.Table:
        if self.store is None:
            self.store = FeatureStore(self.url)
        group = with_reject_columns(group)
        video = self.store.get(str(group["video_uid"][0])) if group.num_rows else None
        if video is None:
            group = group.append_column("frames", pa.nulls(group.num_rows, pa.binary()))
            return mark(group, np.ones(group.num_rows, bool), self.stage, "no_video_features",
                        f"video {group['video_uid'][0] if group.num_rows else ''}")
        t1 = group["t_start"].to_numpy(zero_copy_only=False)
        t2 = group["t_end"].to_numpy(zero_copy_only=False)
        frames = sample(video, t1, t2, self.num_frames)
        return group.append_column("frames", pa.array([to_npy(f) for f in frames], pa.binary()))


class NarratorStage(Stage):
    """A trained narrator (frozen LM + gated cross-attention) → ``texts`` and ``nlls`` per window."""

    name = "narrate"

    def __init__(self, model: str, sampling: Sampling, gpu: bool = False, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.model_url, self.sampling, self.gpu = model, sampling, gpu
        self.model: Any = None
        self.device: Any = None

    def setup(self) -> None:
        import torch

        from egoray.models.narrator import load_narrator

        self.device = torch.device("cuda" if self.gpu and torch.cuda.is_available() else "cpu")
        self.model = load_narrator(self.model_url).to(self.device)

    def process(self, rows: pa.Table) -> pa.Table:

        s = self.sampling
        frames = np.stack([from_npy(b) for b in rows["frames"].to_pylist()])
        seeds = [[row_seed(s.seed, "narrate", w, k) for k in range(s.n)] for w in rows["window_id"].to_pylist()]
        texts, nlls, entropies = self.model.generate(
            self.model.prepare(frames).to(self.device), n=s.n, max_new_tokens=s.max_new_tokens, top_p=s.top_p,
            temperature=s.temperature, do_sample=s.do_sample, use_cache=s.use_cache, seeds=seeds, return_entropy=True)
        rows = rows.drop_columns(["frames"])
        rows = rows.append_column("texts", pa.array(texts, pa.list_(pa.string())))
        rows = rows.append_column("nlls", pa.array(nlls, pa.list_(pa.float64())))
        return rows.append_column("entropies", pa.array(entropies, pa.list_(pa.float64())))


@dataclass
class CaptionSink(Sink):
    """``captions/<base>.parquet``: one row per caption, ``caption_id`` = ``<window_id>#<k>``."""

    def empty_tables(self) -> dict[str, pa.Table]:
        return {**super().empty_tables(), "captions": CAPTIONS.empty_table()}

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        out = []
        columns = ["window_id", "video_uid", "t_start", "t_end", "texts", "nlls", "entropies"]
        for r in rows.select([c for c in columns if c in rows.column_names]).to_pylist():
            entropies = r.get("entropies") or [None] * len(r["texts"])  # the VLM's captions have none
            for k, (text, nll, entropy) in enumerate(zip(r["texts"], r["nlls"], entropies, strict=True)):
                out.append({"caption_id": f"{r['window_id']}#{k}", "window_id": r["window_id"],
                            "video_uid": r["video_uid"], "t_start": r["t_start"], "t_end": r["t_end"], "k": k,
                            "text": text, "nll": nll, "entropy": entropy})
        write_part(output, "captions", base, pa.Table.from_pylist(out, schema=CAPTIONS))
        return {"captions": len(out)}


def write_total_pkl(output: str, style: str = "egoray", scores: str = "nll") -> int:
    """LaViLa's ``total.pkl`` from ``captions/``: one quintuple per window, in video then time order.

    ``scores``: ``nll`` — each caption's mean negative log-likelihood per token (lower is more
    likely); ``lavila`` — what LaViLa's narrator writes there: the exponential of the mean entropy
    of the next-token distribution over the caption's steps. ``style: lavila`` writes the texts
    in LaViLa's ``#C C`` style.
    """
    from egoray.data.lavila import lavila_style

    url = storage.join(output, "captions")
    table = storage.read_parquet(url) if storage.listdir(url, ".parquet") else CAPTIONS.empty_table()
    if scores == "lavila" and table.num_rows and ("entropy" not in table.column_names
                                                  or table["entropy"].null_count):
        raise ValueError(f"{output}: captions without entropies (a VLM's): write total.pkl with scores: nll")
    windows: dict[str, tuple] = {}
    for r in table.sort_by([("video_uid", "ascending"), ("t_start", "ascending"), ("window_id", "ascending"),
                            ("k", "ascending")]).to_pylist():
        entry = windows.setdefault(r["window_id"], (r["video_uid"], r["t_start"], r["t_end"], [], []))
        entry[3].append(lavila_style(r["text"]) if style == "lavila" else r["text"])
        entry[4].append(float(np.exp(r["entropy"])) if scores == "lavila" else r["nll"])
    storage.write_bytes(storage.join(output, "total.pkl"), pickle.dumps(list(windows.values()), protocol=4))
    return len(windows)
