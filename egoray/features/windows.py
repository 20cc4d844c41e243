"""Features of time windows, one video at a time: the Ray-free core of every pair-building pass.

A ``video_features`` output holds per-time-step features per key (a video, or a clip window)
in HDF5 shards with a Parquet index. Jobs that need windows of them (training pairs, narration,
evaluation) group their items by video and, per video, read that video's features once
(:class:`FeatureStore`) and pool or sample all its windows at once (:func:`pool`,
:func:`sample`). Nothing here holds more than one video's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError


@dataclass
class VideoFeatures:
    """One key's features ``[T, D]``: feature ``k`` covers ``[t0 + k/fps, t0 + (k+1)/fps)``."""

    features: np.ndarray
    fps: float
    t0: float = 0.0

    def bounds(self, t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row ranges ``[lo, hi)`` of the features inside ``[t1, t2]`` (at least one row each).

        ``floor((t - t0) * fps)`` is the feature containing time t (Ego4D's convention).
        """
        n = len(self.features)
        rel1 = np.floor((np.asarray(t1, np.float64) - self.t0) * self.fps).astype(np.int64)
        rel2 = np.floor((np.asarray(t2, np.float64) - self.t0) * self.fps).astype(np.int64)
        lo = np.clip(rel1, 0, n - 1)
        hi = np.clip(rel2, lo, n - 1) + 1
        return lo, hi

    @property
    def duration(self) -> float:
        return len(self.features) / self.fps


def pool(video: VideoFeatures, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Mean feature of each window ``[t1, t2]``: ``[N, D]`` float32 (a cumulative sum over the video)."""
    lo, hi = video.bounds(t1, t2)
    feats = video.features
    if len(lo) == 0:
        return np.zeros((0, feats.shape[1]), np.float32)
    csum = np.zeros((feats.shape[0] + 1, feats.shape[1]), dtype=np.float64)
    np.cumsum(feats, axis=0, out=csum[1:])
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)


def sample(video: VideoFeatures, t1: np.ndarray, t2: np.ndarray, num: int) -> np.ndarray:
    """``num`` features spread uniformly over each window: ``[N, num, D]`` (repeats when short)."""
    lo, hi = video.bounds(t1, t2)
    frac = (np.arange(num) + 0.5) / num
    idx = lo[:, None] + np.floor(frac[None, :] * (hi - lo)[:, None]).astype(np.int64)
    return video.features[idx].astype(np.float32, copy=False)


def spread(features: np.ndarray, num: int) -> np.ndarray:
    """``num`` rows spread uniformly over all of ``features`` ``[n, D]`` → ``[num, D]``."""
    idx = np.floor((np.arange(num) + 0.5) / num * len(features)).astype(np.int64)
    return features[idx].astype(np.float32, copy=False)


class FeatureStore:
    """Reads one key's features at a time from a ``video_features`` output.

    The index (one row per key) is read once; shards of a remote output are downloaded once
    per process and kept on local disk (a few, least recently used first out), so the keys of
    one shard cost one download.
    """

    def __init__(self, url: str, cached_shards: int = 4) -> None:
        index_url = storage.join(url, "index")
        if not storage.exists(index_url):
            raise InputError(f"{url}: not a video_features output (no index/ table)")
        try:
            index = storage.read_parquet(index_url, columns=["key", "file", "n", "fps", "t_start"])
        except storage.StorageError as e:
            raise InputError(f"{url}: cannot read the feature index: {e}") from None
        self.url = url
        self.rows: dict[str, tuple[str, float, float]] = {
            k: (f, float(fps) if fps else 0.0, float(t0 or 0.0))
            for k, f, fps, t0 in zip(*(index[c].to_pylist() for c in ("key", "file", "fps", "t_start")), strict=True)}
        self.files = storage.LocalFiles(cached_shards)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> VideoFeatures | None:
        """The features of ``key``, or None when the output has none for it."""
        row = self.rows.get(key)
        if row is None:
            return None
        file, fps, t0 = row
        if fps <= 0:
            raise InputError(f"{self.url}: features were sampled by frame count, not rate; windows need sampling.fps")
        import h5py

        with h5py.File(self.files.path(storage.join(self.url, file)), "r") as h5:
            feats = np.asarray(h5[key][()], dtype=np.float32)
        if len(feats) == 0:
            return None
        return VideoFeatures(feats, fps, t0)

    def whole(self, key: str) -> np.ndarray | None:
        """Every feature row of ``key`` ``[n, D]`` whatever its sampling (a clip's own frames or
        windows, e.g. a video–text tower's one feature per clip), or None when there are none."""
        row = self.rows.get(key)
        if row is None:
            return None
        import h5py

        with h5py.File(self.files.path(storage.join(self.url, row[0])), "r") as h5:
            feats = np.asarray(h5[key][()], dtype=np.float32)
        return feats if len(feats) else None

    def keys(self) -> list[str]:
        return sorted(self.rows)

    def table(self) -> pa.Table:
        """``key, fps, t_start, duration``-less index view (for tiling every video)."""
        keys = self.keys()
        return pa.table({"video_uid": keys, "fps": [self.rows[k][1] for k in keys],
                         "t0": [self.rows[k][2] for k in keys]})
