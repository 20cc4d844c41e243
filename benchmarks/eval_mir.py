"""EK-100 MIR mAP and nDCG of a 10,000 x 10,000 similarity matrix: egoray vs a per-query loop.

The reference is how the metric is usually written when it is not vectorised over queries: a
Python loop over the rows, each row ranked and scored with numpy (argsort, take, cumsum), the
same definitions (EK-100 / JPoSE) and the same tie rule. The relevancy is EK-100-like: half
"same verb" plus half noun-set IoU of random labels (97 verbs, 300 nouns, 1-2 nouns each), so
it is graded and sparse like the real one; every query has an exact match.

    uv run --extra bench python benchmarks/eval_mir.py          # --size N for another size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch  # noqa: F401  (imported before timing: ours uses it, the reference does not need it)

from egoray.eval.relevancy import label_relevancy
from egoray.eval.retrieval import mean_average_precision, ndcg

HERE = Path(__file__).resolve().parent


def make_input(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    verbs = rng.integers(0, 97, n)
    nouns = np.zeros((n, 300), dtype=bool)
    nouns[np.arange(n), rng.integers(0, 300, n)] = True
    extra = rng.random(n) < 0.3
    nouns[np.flatnonzero(extra), rng.integers(0, 300, int(extra.sum()))] = True
    rel = label_relevancy(verbs, nouns, verbs, nouns)  # square: item i's own sentence is an exact match
    # a similarity that is informative but noisy, as a trained model's is
    sim = (rel + rng.normal(scale=0.6, size=rel.shape)).astype(np.float32)
    return sim, rel


def _ranked(s_row: np.ndarray, r_row: np.ndarray) -> np.ndarray:
    order = np.lexsort((r_row, -s_row.astype(np.float64)))  # by score, ties: least relevant first
    return r_row[order].astype(np.float64)


def map_per_query(sim: np.ndarray, rel: np.ndarray) -> float:
    aps = []
    for s_row, r_row in zip(sim, rel):
        r = _ranked(s_row, r_row)
        precision = np.cumsum(r) / np.arange(1, len(r) + 1)
        hits = r == 1
        aps.append(precision[hits].sum() / hits.sum())
    return float(np.mean(aps))


def ndcg_per_query(sim: np.ndarray, rel: np.ndarray) -> float:
    scores = []
    for s_row, r_row in zip(sim, rel):
        k = int((r_row > 0).sum())
        discount = 1.0 / np.log2(np.arange(k) + 2.0)
        dcg = (_ranked(s_row, r_row)[:k] * discount).sum()
        idcg = (np.sort(r_row.astype(np.float64))[::-1][:k] * discount).sum()
        scores.append(dcg / idcg)
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args()
    sim, rel = make_input(args.size)
    results: dict = {"size": [args.size, args.size], "relevancy_nonzero_per_row": float((rel > 0).sum(1).mean())}
    for name, ours, reference in (("mAP", mean_average_precision, map_per_query), ("nDCG", ndcg, ndcg_per_query)):
        t0 = time.perf_counter()
        value = ours(sim, rel)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_value = reference(sim, rel)
        t_ref = time.perf_counter() - t0
        assert abs(value - ref_value) < 1e-9, (name, value, ref_value)
        results[name] = {"value": value, "egoray_s": round(t_ours, 2), "per_query_loop_s": round(t_ref, 2),
                         "ratio": round(t_ref / t_ours, 2)}
        print(f"{name}: {value:.4f}; egoray {t_ours:.2f}s, per-query loop {t_ref:.2f}s, {t_ref / t_ours:.2f}x",
              flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "eval_mir.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
