"""Retrieval metrics from a similarity matrix: recall@k, median rank, and EK-100 MIR mAP / nDCG.

``relevant[i]`` holds the candidates that count as correct for query i: one index for
instance retrieval, or a boolean row when several candidates are right (same caption, same
verb and noun). Recall ranks are counted without sorting. mAP counts each relevant item's rank
directly and nDCG selects only each row's top K with torch (multi-threaded), in query chunks,
so a 10k x 10k matrix is never sorted whole.

Ties are always broken against the model: a wrong (or less relevant) candidate that scores the
same as a right one ranks above it, so a constant similarity matrix earns no credit.
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


def blockwise_ranks(queries: np.ndarray, candidates: np.ndarray, query_codes: np.ndarray | None = None,
                    candidate_codes: np.ndarray | None = None, block: int = 2048) -> np.ndarray:
    """:func:`ranks_of_first_relevant` of ``queries @ candidates.T`` without holding the whole matrix:
    ``block`` query rows at a time. Relevant: the same code (codes given), else the same index."""
    ranks = []
    for start in range(0, len(queries), block):
        rows = slice(start, min(len(queries), start + block))
        sim = queries[rows].astype(np.float64) @ candidates.T.astype(np.float64)
        if query_codes is None:
            relevant = np.arange(rows.start, rows.stop)
        else:
            relevant = query_codes[rows, None] == candidate_codes[None, :]
        ranks.append(ranks_of_first_relevant(sim, relevant))
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


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


def paired_retrieval_metrics(v: np.ndarray, t: np.ndarray, verb: np.ndarray, noun: np.ndarray,
                             captions: np.ndarray) -> dict[str, float]:
    """Text→video and video→text recall per instance, per caption and per verb+noun (when every
    item has labels), each with its chance level, from paired embeddings ``v`` and ``t``."""
    n = len(v)
    out: dict[str, float] = {"eval_items": float(n)}
    variants: list[tuple[str, np.ndarray | None]] = [("", None), ("_caption", captions)]
    if ((verb >= 0) & (noun >= 0)).all():
        variants.append(("_label", np.unique(np.stack([verb, noun], 1), axis=0, return_inverse=True)[1].ravel()))
    for name, codes in variants:
        for direction, q, c in (("t2v", t, v), ("v2t", v, t)):
            for k, value in recall_at(blockwise_ranks(q, c, codes, codes)).items():
                out[f"{direction}_{k}{name}"] = value
        out[f"chance_R@1{name}"] = _chance_of_codes(codes, n)
    return out


def _chance_of_codes(codes: np.ndarray | None, n: int) -> float:
    """Expected R@1 of a random ranking: the mean share of candidates relevant to a query."""
    if codes is None:
        return chance_recall_at_1(np.arange(n))
    _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    return float((counts[inverse] / n).mean())


def _chunks(n_rows: int, n_cols: int, budget: int = 1 << 22):
    step = max(1, budget // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _check(sim: np.ndarray, rel: np.ndarray) -> None:
    if sim.ndim != 2 or sim.shape != rel.shape:
        raise ValueError(f"similarity {sim.shape} and relevancy {rel.shape} must be matrices of one shape")
    if not np.isfinite(sim).all():
        raise ValueError("the similarity matrix holds NaN or infinite values")
    if (rel < 0).any():
        raise ValueError("relevancy values must be >= 0")


def mean_average_precision(sim: np.ndarray, rel: np.ndarray, reduce: bool = True) -> float | np.ndarray:
    """EK-100 MIR mAP (the JPoSE / LaViLa definition) of the rows of ``sim`` [Q, C].

    A candidate is relevant when its relevancy is exactly 1; precision at k counts the *summed
    relevancy* of the top k (so partially relevant items help), divided by k. Every query needs
    at least one fully relevant candidate.

    No row is sorted: each relevant item's rank (and the relevancy above it) is counted directly,
    O(relevant items x candidates) instead of a sort of every row. Scores compare at float32.
    """
    import torch

    sim, rel = np.asarray(sim), np.asarray(rel, dtype=np.float32)
    _check(sim, rel)
    hits_per_query = (rel == 1).sum(axis=1)
    if (hits_per_query == 0).any():
        raise ValueError(f"{int((hits_per_query == 0).sum())} queries have no candidate with relevancy 1")
    total = np.zeros(sim.shape[0])
    columns = torch.arange(sim.shape[1])
    scores = torch.from_numpy(np.ascontiguousarray(sim, dtype=np.float32))
    relevancy = torch.from_numpy(np.ascontiguousarray(rel))
    q_all, j_all = torch.nonzero(relevancy == 1, as_tuple=True)
    for part in _chunks(len(q_all), sim.shape[1]):
        q, j = q_all[part], j_all[part]
        s, r = scores[q], relevancy[q]
        s_hit = s.gather(1, j[:, None])
        # ranked above a hit: a higher score; or the same score and less relevant (ties go against
        # the model), or as relevant and an earlier column
        above = (s > s_hit) | ((s == s_hit) & ((r < 1) | ((r == 1) & (columns[None, :] < j[:, None]))))
        position = above.sum(dim=1, dtype=torch.float64) + 1
        found = (above * r).sum(dim=1, dtype=torch.float64) + 1.0
        np.add.at(total, q.numpy(), (found / position).numpy())
    out = total / hits_per_query
    return float(out.mean()) if reduce else out


def ndcg(sim: np.ndarray, rel: np.ndarray, reduce: bool = True) -> float | np.ndarray:
    """EK-100 MIR nDCG: DCG over the first K ranks, K = the number of candidates with relevancy > 0,
    divided by the DCG of the ideal order. Queries with no relevant candidate are an error.

    Only the top K+1 scores of each row are selected (``topk``), rows grouped by K so a chunk
    selects about as many as it needs. A row whose selection holds tied scores is re-ranked
    exactly (score, then relevancy ascending, then column), as the tie rule requires.
    """
    import torch

    sim, rel = np.asarray(sim), np.asarray(rel, dtype=np.float32)
    _check(sim, rel)
    counts = (rel > 0).sum(axis=1)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} queries have no relevant candidate")
    out = np.empty(sim.shape[0])
    scores = torch.from_numpy(np.ascontiguousarray(sim, dtype=np.float32))
    relevancy = torch.from_numpy(np.ascontiguousarray(rel))
    by_k = np.argsort(counts, kind="stable")
    step = max(1, (1 << 22) // sim.shape[1])
    for start in range(0, len(by_k), step):
        rows = torch.from_numpy(by_k[start:start + step])
        k = torch.from_numpy(counts[rows.numpy()])
        kmax = int(k.max())
        take = min(kmax + 1, sim.shape[1])
        s, r = scores[rows], relevancy[rows].double()
        values, top = torch.topk(s, take, dim=1, largest=True, sorted=True)
        positions = torch.arange(take)[None, :]
        tied = ((values[:, 1:] == values[:, :-1]) & (positions[:, 1:] <= k[:, None])).any(dim=1)
        for i in torch.nonzero(tied).flatten().tolist():  # rare with real-valued scores
            order = np.lexsort((np.arange(sim.shape[1]), r[i].numpy(), -s[i].numpy().astype(np.float64)))
            top[i] = torch.from_numpy(order[:take])
        top = top[:, :kmax]
        discount = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float64) + 2.0)
        within = torch.arange(kmax)[None, :] < k[:, None]
        dcg = (torch.gather(r, 1, top) * discount * within).sum(dim=1)
        ideal = torch.topk(r, kmax, dim=1).values
        out[rows.numpy()] = (dcg / (ideal * discount * within).sum(dim=1)).numpy()
    return float(out.mean()) if reduce else out


def mir_metrics(sim: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    """EK-100 multi-instance retrieval: ``sim``/``rel`` are [videos, sentences]; both directions and
    their average, as the benchmark reports them."""
    sim, rel = np.asarray(sim, dtype=np.float32), np.asarray(rel, dtype=np.float32)
    out = {"v2t_mAP": mean_average_precision(sim, rel), "t2v_mAP": mean_average_precision(sim.T, rel.T),
           "v2t_nDCG": ndcg(sim, rel), "t2v_nDCG": ndcg(sim.T, rel.T)}
    out["avg_mAP"] = (out["v2t_mAP"] + out["t2v_mAP"]) / 2
    out["avg_nDCG"] = (out["v2t_nDCG"] + out["t2v_nDCG"]) / 2
    return out

