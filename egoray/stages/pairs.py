"""(video window, text) pairs, built one video at a time: what training and evaluation read.

An item (a narration, a clip, a question's moment) at ``[t_start, t_end]`` — a point for Ego4D —
is paired with its video's features over ``[t_start - offset, t_end + offset]``: their mean
(``video``, for dual encoders) or ``num_frames`` of them spread over the window (``frames``, for
the narrator). :class:`PoolPairs` is a ``map_groups`` function: one call per video, that video's
features read once. Items whose video has no features are marked ``no_video_features``.
Verb and noun come from the items or from a labels table (the segment containing the item's
middle); they become stable integer codes, the same on every worker.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.data.raw import InputError
from egoray.features.windows import FeatureStore, pool, sample, spread
from egoray.stages.base import mark, with_reject_columns
from egoray.stages.video import to_npy

FLOATS = pa.list_(pa.float32())
UNBOUNDED = 1e9  # seconds: before or after any video


def label_code(value: str | None) -> int:
    """A stable non-negative code of a verb/noun label (the same in every process); -1 if missing."""
    if not value:
        return -1
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=7).digest(), "little")


class Labels:
    """verb/noun of labelled segments (``video_uid, t_start, t_end, verb, noun``), by video."""

    def __init__(self, url: str) -> None:
        try:
            table = storage.read_parquet(url)
        except storage.StorageError as e:
            raise InputError(f"cannot read labels: {e}") from None
        need = {"video_uid", "t_start", "t_end", "verb", "noun"}
        if not need <= set(table.column_names):
            raise InputError(f"labels table needs columns {sorted(need)}; found {table.column_names}")
        lab = table.sort_by([("video_uid", "ascending"), ("t_start", "ascending")]).select(sorted(need)).to_pydict()
        self.by_video: dict[str, tuple[np.ndarray, np.ndarray, list, list]] = {}
        start = 0
        uids = lab["video_uid"]
        for i in range(1, len(uids) + 1):
            if i == len(uids) or uids[i] != uids[start]:
                self.by_video[uids[start]] = (np.array(lab["t_start"][start:i], np.float64),
                                              np.array(lab["t_end"][start:i], np.float64),
                                              lab["verb"][start:i], lab["noun"][start:i])
                start = i

    def at(self, video: str, times: np.ndarray) -> tuple[list, list]:
        """verb and noun of the segment containing each time (None outside every segment)."""
        seg = self.by_video.get(video)
        verbs: list = [None] * len(times)
        nouns: list = [None] * len(times)
        if seg is None:
            return verbs, nouns
        for i, t in enumerate(times):
            j = int(np.searchsorted(seg[0], t, side="right")) - 1
            if j >= 0 and t <= seg[1][j]:
                verbs[i], nouns[i] = seg[2][j], seg[3][j]
        return verbs, nouns


class PoolPairs:
    """One video's items (a ``map_groups`` group) → their ``video`` (mean feature of the window) or
    ``frames`` (``num_frames`` features, ``.npy``), and ``verb_code``/``noun_code``."""

    def __init__(self, features: str, offset: float = 0.0, labels: str | None = None, num_frames: int | None = None,
                 stage: str = "pairs") -> None:
        self.url, self.offset, self.labels_url, self.num_frames, self.stage = features, offset, labels, num_frames, stage
        self.store: FeatureStore | None = None
        self.labels: Labels | None = None
        self.__name__ = type(self).__name__  # Ray Data names a map_groups operator after its function

    def __call__(self, group: pa.Table) -> pa.Table:
        if self.store is None:
            self.store = FeatureStore(self.url)
            self.labels = Labels(self.labels_url) if self.labels_url else None
        group = with_reject_columns(group)
        n = group.num_rows
        uid = str(group["video_uid"][0]) if n else ""
        # a missing time is the video's start or end (a clip table row for a whole video)
        t_start = pc.fill_null(pc.cast(group["t_start"], pa.float64()), -UNBOUNDED).to_numpy(zero_copy_only=False)
        t_end = pc.fill_null(pc.cast(group["t_end"], pa.float64()), UNBOUNDED).to_numpy(zero_copy_only=False)
        verbs = group["verb"].to_pylist() if "verb" in group.column_names else [None] * n
        nouns = group["noun"].to_pylist() if "noun" in group.column_names else [None] * n
        if self.labels is not None:
            lv, ln = self.labels.at(uid, (t_start + t_end) / 2)
            verbs = [v if v is not None else x for v, x in zip(verbs, lv, strict=True)]
            nouns = [v if v is not None else x for v, x in zip(nouns, ln, strict=True)]
        group = group.append_column("verb_code", pa.array([label_code(v) for v in verbs], pa.int64()))
        group = group.append_column("noun_code", pa.array([label_code(v) for v in nouns], pa.int64()))
        # an item whose id is a key of the features has its own (a clip's frames, as EK-100 and
        # LaViLa evaluate); the others take their window of the whole video's features
        ids = [str(x) for x in group["id"].to_pylist()] if "id" in group.column_names else [""] * n
        own = np.array([bool(k) and k in self.store for k in ids], dtype=bool)
        vectors: list = [None] * n
        for i in np.flatnonzero(own):
            clip = self.store.whole(ids[i])
            if clip is not None:
                vectors[i] = spread(clip, self.num_frames) if self.num_frames else clip.mean(0)
        rest = np.flatnonzero(~own)
        video = self.store.get(uid) if len(rest) else None
        if video is not None:
            t1, t2 = t_start[rest] - self.offset, t_end[rest] + self.offset
            windows = sample(video, t1, t2, self.num_frames) if self.num_frames else pool(video, t1, t2)
            for i, w in zip(rest, windows, strict=True):
                vectors[i] = w
        missing = np.array([v is None for v in vectors], dtype=bool)
        if self.num_frames:
            column = pa.array([None if v is None else to_npy(v) for v in vectors], pa.binary())
        elif missing.any() or n == 0:
            column = pa.array([None if v is None else np.asarray(v, np.float32) for v in vectors], FLOATS)
        else:
            pooled = np.stack(vectors).astype(np.float32, copy=False)
            column = pa.FixedSizeListArray.from_arrays(pa.array(pooled.reshape(-1), pa.float32()),
                                                       pooled.shape[1]).cast(FLOATS)
        group = group.append_column("frames" if self.num_frames else "video", column)
        return mark(group, missing, self.stage, "no_video_features", f"video {uid}") if missing.any() else group


class AttachEmbeddings:
    """Rows of an HDF5 ``text_features`` index (``file``, ``row``) → their ``embedding``; a batch
    reads each shard it needs once (remote shards are downloaded, a few kept)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.files = storage.LocalFiles()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import h5py

        files = batch["file"].to_pylist()
        rows = batch["row"].to_numpy(zero_copy_only=False)
        out: list[np.ndarray | None] = [None] * len(files)
        for file in sorted(set(files)):
            sel = [i for i, f in enumerate(files) if f == file]
            with h5py.File(self.files.path(storage.join(self.url, file)), "r") as h5:
                mat = h5["embeddings"][()]
            for i in sel:
                out[i] = np.asarray(mat[rows[i]], np.float32)
        dim = len(out[0]) if out else 0
        flat = np.concatenate(out) if out else np.zeros(0, np.float32)
        return batch.append_column("embedding", pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()),
                                                                                  dim).cast(FLOATS))


def caption_codes(texts: list[str]) -> np.ndarray:
    """Integer codes of normalised texts (equal texts, equal codes) within one set."""
    norm = [" ".join(str(t).lower().split()) for t in texts]
    vocab = {t: i for i, t in enumerate(sorted(set(norm)))}
    return np.array([vocab[t] for t in norm], dtype=np.int64)
