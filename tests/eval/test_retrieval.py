import numpy as np
import pytest

from egoray.eval.retrieval import chance_recall_at_1, ranks_of_first_relevant, recall_at, retrieval_metrics


def test_perfect_and_reversed_retrieval():
    n = 12
    perfect = np.eye(n)
    m = retrieval_metrics(perfect)
    assert m["R@1"] == 1.0 and m["median_rank"] == 1.0
    # reversed: the correct item always scores lowest -> rank n
    reversed_ = -np.eye(n)
    m = retrieval_metrics(reversed_)
    assert m["R@1"] == 0.0 and m["R@10"] == 0.0 and m["median_rank"] == n


def test_small_matrix_by_hand():
    sim = np.array([[0.9, 0.1, 0.5],   # correct 0 -> rank 1
                    [0.8, 0.7, 0.1],   # correct 1 -> rank 2
                    [0.9, 0.8, 0.1]])  # correct 2 -> rank 3
    ranks = ranks_of_first_relevant(sim, np.arange(3))
    assert ranks.tolist() == [0, 1, 2]
    assert recall_at(ranks, (1, 2)) == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "median_rank": 2.0}


def test_ties_count_against_the_query():
    sim = np.array([[0.5, 0.5], [0.2, 0.2]])
    assert ranks_of_first_relevant(sim, np.arange(2)).tolist() == [1, 1]


def test_multiple_relevant_candidates_and_chance():
    sim = np.array([[0.1, 0.9, 0.2, 0.0],
                    [0.3, 0.2, 0.1, 0.0]])
    rel = np.array([[True, True, False, False],
                    [False, False, True, False]])
    assert ranks_of_first_relevant(sim, rel).tolist() == [0, 2]
    assert chance_recall_at_1(rel) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert chance_recall_at_1(np.arange(5)) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        ranks_of_first_relevant(sim, np.zeros((2, 4), bool))


# --- EK-100 MIR mAP and nDCG ---------------------------------------------------------------

import math  # noqa: E402

from egoray.eval.retrieval import mean_average_precision, mir_metrics, ndcg  # noqa: E402


def _ap_by_hand(sim_row, rel_row):
    """Oracle: one query in plain Python (ties broken against the model)."""
    order = sorted(range(len(sim_row)), key=lambda j: (-sim_row[j], rel_row[j]))
    found = total = hits = 0.0
    for k, j in enumerate(order, start=1):
        found += rel_row[j]
        if rel_row[j] == 1:
            total += found / k
            hits += 1
    return total / hits


def _ndcg_by_hand(sim_row, rel_row):
    order = sorted(range(len(sim_row)), key=lambda j: (-sim_row[j], rel_row[j]))
    k = sum(1 for x in rel_row if x > 0)
    dcg = sum(rel_row[j] / math.log2(i + 2) for i, j in enumerate(order[:k]))
    idcg = sum(x / math.log2(i + 2) for i, x in enumerate(sorted(rel_row, reverse=True)[:k]))
    return dcg / idcg


def test_map_binary_worked_by_hand():
    # relevant items land at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    sim = np.array([[0.9, 0.8, 0.7, 0.1]])
    rel = np.array([[1.0, 0.0, 1.0, 0.0]])
    assert mean_average_precision(sim, rel) == pytest.approx((1 + 2 / 3) / 2)
    # a second query with its only relevant item last (rank 4): AP = 1/4
    sim2 = np.vstack([sim, [0.9, 0.8, 0.7, 0.1]])
    rel2 = np.vstack([rel, [0.0, 0.0, 0.0, 1.0]])
    assert mean_average_precision(sim2, rel2, reduce=False).tolist() == pytest.approx([(1 + 2 / 3) / 2, 0.25])


def test_map_counts_partial_relevancy_in_precision():
    # EK-100's definition: precision at k sums the graded relevancy of the top k
    sim = np.array([[0.9, 0.8, 0.7]])
    rel = np.array([[0.5, 1.0, 0.0]])
    assert mean_average_precision(sim, rel) == pytest.approx((0.5 + 1.0) / 2)


def test_ndcg_matches_the_published_worked_example():
    # the example shipped with the EK-100 MIR evaluation code (JPoSE), nDCG = 0.93717899...
    sim = np.array([[1.0, 0.7, 0.4, 0.0], [0.3, 0.9, 0.6, 0.1], [0.2, 0.5, 0.8, 0.4]])
    rel = np.array([[1.0, 0.5, 0.25, 0.0], [0.0, 1.0, 0.4, 0.0], [0.5, 0.3, 1.0, 0.0]])
    assert ndcg(sim, rel) == pytest.approx(0.9371789900735429, abs=1e-7)  # relevancy is held as float32
    # by hand, query 2: ranked (1.0, 0.3, 0.0, 0.5); K = 3 relevancies > 0; ideal (1.0, 0.5, 0.3)
    d3 = 1 / math.log2(3)
    expected = (1.0 + 0.3 * d3 + 0.0 / 2) / (1.0 + 0.5 * d3 + 0.3 / 2)
    assert ndcg(sim, rel, reduce=False)[2] == pytest.approx(expected)


def test_perfect_reversed_and_constant_rankings():
    rng = np.random.default_rng(0)
    rel = (rng.random((30, 40)) < 0.2).astype(float)
    rel[np.arange(30), np.arange(30)] = 1.0
    assert mean_average_precision(rel, rel) == pytest.approx(1.0)
    assert ndcg(rel, rel) == pytest.approx(1.0)
    reversed_ = -rel
    worst = mean_average_precision(reversed_, rel)
    assert worst < 0.5 and ndcg(reversed_, rel) < 0.2
    # all scores tied: ties go against the model, so a constant matrix is the worst ordering
    constant = np.zeros_like(rel)
    assert mean_average_precision(constant, rel) == pytest.approx(worst)
    assert ndcg(constant, rel) == pytest.approx(ndcg(reversed_, rel))


def test_vectorised_equals_per_query_oracle_on_graded_relevancy():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(57, 45)).round(1)  # rounding makes ties
    rel = rng.choice([0.0, 0.0, 0.25, 0.5, 1.0], size=sim.shape)
    rel[np.arange(45), np.arange(45)] = 1.0
    rel[45:, 0] = 1.0
    assert mean_average_precision(sim, rel, reduce=False) == pytest.approx([_ap_by_hand(s, r) for s, r in zip(sim, rel)])
    assert ndcg(sim, rel, reduce=False) == pytest.approx([_ndcg_by_hand(s, r) for s, r in zip(sim, rel)])


def test_mir_metrics_average_both_directions_and_reject_bad_input():
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])
    rel = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]])
    m = mir_metrics(sim, rel)
    assert m["avg_mAP"] == pytest.approx((m["v2t_mAP"] + m["t2v_mAP"]) / 2)
    assert m["v2t_mAP"] == pytest.approx(1.0) and m["avg_nDCG"] <= 1.0
    with pytest.raises(ValueError, match="no candidate with relevancy 1"):
        mean_average_precision(sim, np.zeros_like(rel))
    with pytest.raises(ValueError, match="no relevant candidate"):
        ndcg(sim, np.zeros_like(rel))
    with pytest.raises(ValueError, match="one shape"):
        ndcg(sim, rel[:2])
    with pytest.raises(ValueError, match="NaN"):
        ndcg(np.full_like(sim, np.nan), rel)
