"""(video window, text) pairs for training and evaluation, built once, vectorised.

A narration at ``[t_start, t_end]`` (a point for Ego4D) is paired with the mean of its video's
features over ``[t_start - offset, t_end + offset]`` and with its precomputed text embedding.
Narrations whose video has no features or whose text has no embedding are rejected with a
reason, so ``in == out + rejected``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError
from egoray.train.bank import FeatureBank, load_text_embeddings


@dataclass
class Windows:
    """Narration rows resolved to feature-bank rows and times."""

    ids: list[str]
    texts: list[str]
    rows: np.ndarray  # bank row of each item's video
    t1: np.ndarray
    t2: np.ndarray
    split: np.ndarray  # object
    verb: np.ndarray  # int, -1 unknown
    noun: np.ndarray
    rejects: list[dict[str, Any]] = field(default_factory=list)


def resolve_windows(narrations: pa.Table, bank: FeatureBank, offset: float,
                    labels: pa.Table | None = None, stage: str = "pairs") -> Windows:
    """Map each narration to its video's features and its window; attach verb/noun codes."""
    ids = narrations["narration_id"].to_pylist()
    videos = narrations["video_uid"].to_pylist()
    t_start = narrations["t_start"].to_numpy(zero_copy_only=False).astype(np.float64)
    t_end = narrations["t_end"].to_numpy(zero_copy_only=False).astype(np.float64)
    rows = bank.index_of(videos)
    verbs = _column(narrations, "verb")
    nouns = _column(narrations, "noun")
    if labels is not None:
        lv, ln = label_by_time(labels, videos, (t_start + t_end) / 2)
        verbs = [v if v is not None else x for v, x in zip(verbs, lv, strict=True)]
        nouns = [n if n is not None else x for n, x in zip(nouns, ln, strict=True)]
    keep = rows >= 0
    rejects = [{"record_id": i, "stage": stage, "reason": "no_video_features", "detail": f"video {v}",
                "input": ""} for i, v, k in zip(ids, videos, keep, strict=True) if not k]
    idx = np.flatnonzero(keep)
    return Windows(
        ids=[ids[i] for i in idx],
        texts=[t or "" for t in np.asarray(narrations["text"].to_pylist(), dtype=object)[idx]],
        rows=rows[idx], t1=t_start[idx] - offset, t2=t_end[idx] + offset,
        split=np.asarray(_column(narrations, "split"), dtype=object)[idx],
        verb=_codes([verbs[i] for i in idx]), noun=_codes([nouns[i] for i in idx]),
        rejects=rejects,
    )


def _column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


def _codes(values: list[str | None]) -> np.ndarray:
    """Stable integer codes (sorted vocabulary); -1 for missing."""
    vocab = {v: i for i, v in enumerate(sorted({v for v in values if v}))}
    return np.array([vocab.get(v, -1) if v else -1 for v in values], dtype=np.int64)


def label_by_time(labels: pa.Table, videos: list[str], times: np.ndarray) -> tuple[list, list]:
    """verb/noun of the labelled segment (``video_uid, t_start, t_end, verb, noun``) containing each time."""
    need = {"video_uid", "t_start", "t_end", "verb", "noun"}
    if not need <= set(labels.column_names):
        raise InputError(f"labels table needs columns {sorted(need)}; found {labels.column_names}")
    by_video: dict[str, tuple[np.ndarray, np.ndarray, list, list]] = {}
    lab = labels.sort_by([("video_uid", "ascending"), ("t_start", "ascending")]).to_pydict()
    for v in set(lab["video_uid"]):
        sel = [i for i, x in enumerate(lab["video_uid"]) if x == v]
        by_video[v] = (np.array([lab["t_start"][i] for i in sel]), np.array([lab["t_end"][i] for i in sel]),
                       [lab["verb"][i] for i in sel], [lab["noun"][i] for i in sel])
    verbs: list = [None] * len(videos)
    nouns: list = [None] * len(videos)
    for i, (v, t) in enumerate(zip(videos, times, strict=True)):
        seg = by_video.get(v)
        if seg is None:
            continue
        j = int(np.searchsorted(seg[0], t, side="right")) - 1
        if j >= 0 and t <= seg[1][j]:
            verbs[i], nouns[i] = seg[2][j], seg[3][j]
    return verbs, nouns


def text_matrix(url: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``ids`` in a text_features output: (embeddings [N, D], found mask [N])."""
    all_ids, mat = load_text_embeddings(url)
    where = {k: i for i, k in enumerate(all_ids)}
    pos = np.fromiter((where.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
    found = pos >= 0
    out = np.zeros((len(ids), mat.shape[1] if mat.size else 0), dtype=np.float32)
    out[found] = mat[pos[found]]
    return out, found


def read_labels(url: str | None) -> pa.Table | None:
    if not url:
        return None
    try:
        return storage.read_parquet(url)
    except storage.StorageError as e:
        raise InputError(f"cannot read labels: {e}") from None


def reason_counts(rejects: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["reason"] for r in rejects))
