"""Decoded clips for end-to-end video–text training: each narration's window as ``num_frames``
uint8 frames at the visual tower's size (shorter side scaled, centre cropped, as CLIP does).

A batch function for Ray Data's CPU workers: the frames are decoded where the data is read, not
in the training workers or the driver. Narrations whose video is missing or unreadable are
marked with the reason (``no_video``, or the decoder's: ``unreadable``, ``empty``, ...).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.stages.base import mark, with_reject_columns
from egoray.stages.pairs import Labels, label_code
from egoray.stages.video import to_npy


def resize_bicubic(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` → ``[T, size, size, 3]`` by torchvision's bicubic, antialiased resize."""
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    out = F.resize(video, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


class DecodeClips:
    """Narration rows (``video_uid, t_start, t_end``, …) → ``frames`` (``.npy`` of [T, H, W, 3] uint8)
    over ``[t_start - offset, t_end + offset]``, with ``verb_code``/``noun_code``.

    Rows of ``augment_splits`` (every row with ``augment_all``) keep what a per-epoch
    augmentation (:mod:`egoray.video.augment`) draws from instead: the whole
    frame (shorter side ``size``, not cropped) at ``T · per_segment`` times — ``per_segment``
    candidates spread over each of the ``T`` segments of the window.

    ``window_frames`` (EILEV's clips): ``T`` of the window's own frames
    (:func:`egoray.video.decode.clip_frame_times`), the window first moved back inside the video
    when it runs past the end; ``bicubic``: the ``squash`` resize is torchvision's bicubic,
    antialiased ``Resize`` of the whole decoded frame (EILEV's ``extract_frames.py``) instead of
    FFmpeg's scaler.
    """

    def __init__(self, videos: dict[str, str], num_frames: int, size: int, offset: float = 0.0,
                 labels: str | None = None, stage: str = "clips", squash: bool = False,
                 augment_splits: list[str] | None = None, per_segment: int = 1, augment_all: bool = False,
                 window_frames: bool = False, bicubic: bool = False) -> None:
        self.videos, self.num_frames, self.size, self.offset, self.stage = videos, num_frames, size, offset, stage
        self.squash = squash  # BLIP-2: the whole frame resized, not centre-cropped
        self.augment_splits, self.per_segment, self.augment_all = set(augment_splits or []), per_segment, augment_all
        self.window_frames, self.bicubic = window_frames, bicubic
        self.labels_url = labels
        self.labels: Labels | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from egoray.models.vlm_examples import fit_window
        from egoray.video.decode import VideoError, clip_frame_times, iter_frames, probe, sample_times

        batch = with_reject_columns(batch)
        n = batch.num_rows
        uids = [str(u) for u in batch["video_uid"].to_pylist()]
        t0 = pc.cast(batch["t_start"], pa.float64()).to_numpy(zero_copy_only=False) - self.offset
        t1 = pc.cast(batch["t_end"], pa.float64()).to_numpy(zero_copy_only=False) + self.offset
        splits = batch["split"].to_pylist() if "split" in batch.column_names else [None] * n
        augmented = [self.augment_all or s in self.augment_splits for s in splits]
        frames: list[bytes | None] = [None] * n
        reasons: list[str] = [""] * n
        details: list[str] = [""] * n
        decode_size = None if self.bicubic else self.size  # bicubic: whole frames, resized after
        order = sorted(range(n), key=lambda i: (uids[i], t0[i]))  # one local copy per video and batch
        i = 0
        while i < n:
            uid = uids[order[i]]
            rows = []
            while i < n and uids[order[i]] == uid:
                rows.append(order[i])
                i += 1
            path = self.videos.get(uid)
            if path is None:
                for r in rows:
                    reasons[r], details[r] = "no_video", f"no file for video {uid}"
                continue
            try:
                with storage.local_copy(path) as local:
                    info = probe(local) if self.window_frames else None
                    for r in rows:
                        start = max(0.0, float(t0[r]))
                        count = self.num_frames * (self.per_segment if augmented[r] else 1)
                        if info is not None:
                            a, b = fit_window(start, max(start, float(t1[r])), info.duration or None)
                            times = clip_frame_times(a, b, info.fps, count)
                        else:
                            times = sample_times(start, max(start, float(t1[r])), num_frames=count)
                        clip = np.stack([f for _, f in iter_frames(local, times, decode_size, self.squash,
                                                                   crop=not augmented[r])])
                        frames[r] = to_npy(resize_bicubic(clip, self.size) if self.bicubic else clip)
            except (VideoError, storage.StorageError) as err:
                for r in rows:
                    if frames[r] is None:
                        reasons[r] = getattr(err, "reason", "unreadable")
                        details[r] = getattr(err, "detail", str(err))[:300]
        verbs = batch["verb"].to_pylist() if "verb" in batch.column_names else [None] * n
        nouns = batch["noun"].to_pylist() if "noun" in batch.column_names else [None] * n
        if self.labels_url:  # verb/noun of the labelled segment around each narration's middle
            self.labels = self.labels or Labels(self.labels_url)
            middle = (t0 + t1) / 2
            for uid in sorted(set(uids)):
                rows = [r for r in range(n) if uids[r] == uid]
                lv, ln = self.labels.at(uid, middle[rows])
                for r, v, o in zip(rows, lv, ln, strict=True):
                    verbs[r] = verbs[r] if verbs[r] is not None else v
                    nouns[r] = nouns[r] if nouns[r] is not None else o
        if self.labels_url:  # the labels found are the rows' verb and noun too
            for name, values in (("verb", verbs), ("noun", nouns)):
                column = pa.array([None if v is None else str(v) for v in values], pa.string())
                batch = (batch.set_column(batch.schema.get_field_index(name), name, column)
                         if name in batch.column_names else batch.append_column(name, column))
        batch = batch.append_column("frames", pa.array(frames, pa.binary()))
        batch = batch.append_column("verb_code", pa.array([label_code(v) for v in verbs], pa.int64()))
        batch = batch.append_column("noun_code", pa.array([label_code(v) for v in nouns], pa.int64()))
        bad = np.array([bool(r) for r in reasons])
        return mark(batch, bad, self.stage, reasons, details) if bad.any() else batch
