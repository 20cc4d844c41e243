"""All video features of a ``video_features`` output in one array, pooled by time windows.

Training reads every window of every narration once per epoch. Reading an HDF5 dataset (or one
file) per item, as a ``torch.utils.data.Dataset`` would, costs a file open and a small read per
example; here the features are loaded once, stacked into a single ``[sum T, D]`` array, and
windows are pooled for all items at once with a cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError


@dataclass
class FeatureBank:
    """Stacked features: rows ``start[k]:start[k]+length[k]`` of ``features`` belong to key k."""

    keys: list[str]
    start: np.ndarray  # [K] int64
    length: np.ndarray  # [K] int64
    fps: np.ndarray  # [K] float64, features per second
    t0: np.ndarray  # [K] float64, start time of each key's first window
    features: np.ndarray  # [sum T, D] float32
    model: str = ""

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def index_of(self, keys: list[str] | np.ndarray) -> np.ndarray:
        """Position of each key (-1 when absent)."""
        where = {k: i for i, k in enumerate(self.keys)}
        return np.fromiter((where.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def window_bounds(self, rows: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Absolute row ranges ``[lo, hi)`` of features inside ``[t1, t2]`` (at least one row).

        A feature k covers ``[k/fps, (k+1)/fps)`` from the key's start, so ``floor(t * fps)`` is the
        feature containing time t (the convention of Ego4D's per-second features).
        """
        n = self.length[rows]
        rel1 = np.floor((t1 - self.t0[rows]) * self.fps[rows]).astype(np.int64)
        rel2 = np.floor((t2 - self.t0[rows]) * self.fps[rows]).astype(np.int64)
        lo = np.clip(rel1, 0, n - 1)
        hi = np.clip(rel2, lo, n - 1) + 1
        base = self.start[rows]
        return base + lo, base + hi

    def pool(self, rows: np.ndarray, t1: np.ndarray, t2: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Mean feature of each window, for all windows at once: ``[N, D]``.

        Few short windows over a large bank: gather their rows (work ∝ N × window); many
        windows: one cumulative sum over the bank (work ∝ bank size), then two lookups each.
        """
        lo, hi = self.window_bounds(rows, t1, t2)
        if len(lo) == 0:
            return np.zeros((0, self.dim), np.float32)
        length = hi - lo
        width = int(length.max())
        if len(lo) * width < self.features.shape[0]:
            out = np.empty((len(lo), self.dim), np.float32)
            steps = np.arange(width)
            for a in range(0, len(lo), chunk):
                n = length[a:a + chunk, None]
                idx = lo[a:a + chunk, None] + np.minimum(steps[None, :], n - 1)
                mask = (steps[None, :] < n)[..., None]
                out[a:a + chunk] = (self.features[idx] * mask).sum(1, dtype=np.float64) / n
            return out
        csum = np.zeros((self.features.shape[0] + 1, self.dim), dtype=np.float64)
        np.cumsum(self.features, axis=0, out=csum[1:])
        return ((csum[hi] - csum[lo]) / length[:, None]).astype(np.float32)

    def sample(self, rows: np.ndarray, t1: np.ndarray, t2: np.ndarray, num: int) -> np.ndarray:
        """``num`` features spread uniformly over each window: ``[N, num, D]`` (repeats when short)."""
        lo, hi = self.window_bounds(rows, t1, t2)
        frac = (np.arange(num) + 0.5) / num
        idx = lo[:, None] + np.floor(frac[None, :] * (hi - lo)[:, None]).astype(np.int64)
        return self.features[idx]


def load_bank(url: str) -> FeatureBank:
    """Load a ``video_features`` output (index + HDF5 shards) into memory."""
    index_url = storage.join(url, "index")
    if not storage.exists(index_url):
        raise InputError(f"{url}: not a video_features output (no index/ table)")
    index = storage.read_parquet(index_url).sort_by("key")
    if index.num_rows == 0:
        raise InputError(f"{url}: the feature index is empty")
    rows = index.select(["key", "file", "n", "fps", "t_start", "model"]).to_pylist()
    by_file: dict[str, list[str]] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r["key"])
    arrays: dict[str, np.ndarray] = {}
    for file, keys in by_file.items():
        arrays.update(storage.read_hdf5_shard(storage.join(url, file), keys))
    keys = [r["key"] for r in rows]
    lengths = np.array([arrays[k].shape[0] for k in keys], dtype=np.int64)
    if (lengths == 0).any():
        raise InputError(f"{url}: keys with no features: {[k for k, n in zip(keys, lengths) if n == 0][:5]}")
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    features = np.concatenate([arrays[k] for k in keys]).astype(np.float32, copy=False)
    fps = np.array([r["fps"] if r["fps"] else 0.0 for r in rows], dtype=np.float64)
    if (fps <= 0).any():
        raise InputError(f"{url}: features were sampled by frame count, not rate; windows need sampling.fps")
    t0 = np.array([r["t_start"] or 0.0 for r in rows], dtype=np.float64)
    return FeatureBank(keys, start, lengths, fps, t0, features, model=str(rows[0]["model"]))


def load_text_embeddings(url: str) -> tuple[list[str], np.ndarray]:
    """(ids, [N, D] float32) of a ``text_features`` output, Parquet or HDF5 storage."""
    emb_url = storage.join(url, "embeddings")
    if not storage.exists(emb_url):
        raise InputError(f"{url}: not a text_features output (no embeddings/)")
    h5 = storage.listdir(emb_url, ".h5")
    if h5:
        ids: list[str] = []
        mats = []
        for file in h5:
            data = storage.read_hdf5_shard(file)
            ids.extend(x.decode("utf-8") for x in data["ids"])
            mats.append(data["embeddings"])
        return ids, np.concatenate(mats).astype(np.float32, copy=False)
    table = storage.read_parquet(emb_url)
    return table["id"].to_pylist(), embedding_matrix(table["embedding"])


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> column as a 2-D array, without a Python loop."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return np.zeros((0, 0), np.float32)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(arr), -1).astype(np.float32, copy=False)
