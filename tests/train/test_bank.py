import math

import numpy as np

from egoray.train.bank import FeatureBank


def _bank(seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 3, 12])
    feats = rng.normal(size=(lengths.sum(), 5)).astype(np.float32)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return FeatureBank(["a", "b", "c"], start, lengths, np.array([1.875, 2.0, 1.0]), np.zeros(3), feats)


def _naive(bank, row, t1, t2):
    """The per-item way (CLEP notebook's get_start_end_idx) on one video's array."""
    fps, n = bank.fps[row], bank.length[row]
    x1 = min(max(0, math.floor(t1 * fps)), n - 1)
    x2 = min(max(math.floor(t2 * fps), x1), n - 1)
    video = bank.features[bank.start[row]:bank.start[row] + n]
    return video[x1:x2 + 1].mean(0)


def test_vectorised_pooling_equals_per_item_pooling():
    bank = _bank()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 3, 200)
    centre = rng.uniform(-2, 14, 200)
    t1, t2 = centre - 1.0, centre + 1.0
    pooled = bank.pool(rows, t1, t2)
    assert pooled.shape == (200, 5)
    for i in range(200):
        np.testing.assert_allclose(pooled[i], _naive(bank, rows[i], t1[i], t2[i]), rtol=1e-5, atol=1e-6)


def test_few_windows_take_the_gather_path_with_the_same_result():
    bank = _bank()
    rows, t1, t2 = np.array([0, 2]), np.array([1.0, 3.0]), np.array([3.0, 9.5])
    assert len(rows) * 7 < bank.features.shape[0]  # the gather branch
    pooled = bank.pool(rows, t1, t2, chunk=1)
    for i in range(2):
        np.testing.assert_allclose(pooled[i], _naive(bank, rows[i], t1[i], t2[i]), rtol=1e-5, atol=1e-6)


def test_sample_spreads_frames_over_the_window():
    bank = _bank()
    out = bank.sample(np.array([2]), np.array([0.0]), np.array([11.9]), 4)
    assert out.shape == (1, 4, 5)
    # 12 features at 1/s, 4 samples -> rows 1, 4, 7, 10 of video c
    np.testing.assert_array_equal(out[0], bank.features[bank.start[2] + np.array([1, 4, 7, 10])])
    short = bank.sample(np.array([1]), np.array([0.0]), np.array([0.1]), 3)
    np.testing.assert_array_equal(short[0], np.repeat(bank.features[bank.start[1]][None], 3, 0))


def test_unknown_keys_are_minus_one():
    assert _bank().index_of(["c", "zz", "a"]).tolist() == [2, -1, 0]
