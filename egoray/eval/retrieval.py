"""Retrieval metrics from a similarity matrix: recall@k and median rank.

``relevant[i]`` holds the candidates that count as correct for query i: one index for
instance retrieval, or a boolean row when several candidates are right (same caption, same
verb and noun). Ranks are computed in query chunks so a large matrix never needs a full sort.
"""

from __future__ import annotations

import numpy as np


def ranks_of_first_relevant(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked relevant candidate of each query.

    ``relevant``: ``[Q]`` int (the one correct column) or ``[Q, C]`` bool. Ties are counted
    pessimistically: a wrong candidate scoring equal to the best right one ranks above it.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if relevant.ndim == 1:
        best = sim[np.arange(sim.shape[0]), relevant]
        mask = None
    else:
        if not relevant.any(axis=1).all():
            raise ValueError("every query needs at least one relevant candidate")
        best = np.where(relevant, sim, -np.inf).max(axis=1)
        mask = relevant
    above = sim >= best[:, None]
    if mask is None:
        above[np.arange(sim.shape[0]), relevant] = False
    else:
        above &= ~mask
    return above.sum(axis=1)


def recall_at(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``R@k`` (fraction of queries whose first relevant candidate ranks in the top k) and
    ``median_rank`` (1-based)."""
    out = {f"R@{k}": float((ranks < k).mean()) if len(ranks) else 0.0 for k in ks}
    out["median_rank"] = float(np.median(ranks + 1)) if len(ranks) else 0.0
    return out


def retrieval_metrics(sim: np.ndarray, relevant: np.ndarray | None = None,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and median rank of ``sim`` [Q, C]; the diagonal is correct when ``relevant`` is None."""
    if relevant is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"without a relevancy, the similarity matrix must be square; got {sim.shape}")
        relevant = np.arange(sim.shape[0])
    return recall_at(ranks_of_first_relevant(sim, relevant), ks)


def chance_recall_at_1(relevant: np.ndarray) -> float:
    """Expected R@1 of a random ranking: the mean fraction of candidates relevant to a query."""
    if relevant.ndim == 1:
        return 1.0 / max(1, len(relevant))
    return float(relevant.mean(axis=1).mean())
