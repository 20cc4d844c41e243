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
