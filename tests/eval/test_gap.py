import numpy as np
import pytest

from egoray.eval.gap import modality_gap, plot_gap, project_2d


def test_gap_worked_by_hand():
    a = np.array([[2.0, 0.0], [1.0, 0.0]])   # normalised: both (1, 0)
    b = np.array([[0.0, 3.0], [0.0, 1.0]])   # both (0, 1)
    g = modality_gap(a, b)
    assert g["gap_vector"] == [1.0, -1.0] and g["gap_norm"] == pytest.approx(np.sqrt(2))
    assert g["cos_within_a"] == g["cos_within_b"] == pytest.approx(1.0)  # a perfect cone
    assert g["cos_paired"] == g["cos_unpaired"] == pytest.approx(0.0)


def test_identical_modalities_have_no_gap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    g = modality_gap(x, 3 * x)
    assert g["gap_norm"] == pytest.approx(0.0, abs=1e-12) and g["cos_paired"] == pytest.approx(1.0)
    assert g["cos_unpaired"] < 0.5
    with pytest.raises(ValueError):
        modality_gap(x, x[:5])


def test_svd_projection_separates_shifted_modalities_and_plots_a_png():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 16)) + 4, rng.normal(size=(30, 16)) - 4
    xy = project_2d(a, b, "svd")
    assert xy.shape == (60, 2)
    # the gap is the dominant direction: the modalities fall on opposite sides of it
    assert np.sign(xy[:30, 0]).tolist() == [np.sign(xy[0, 0])] * 30
    assert np.sign(xy[30:, 0]).tolist() == [-np.sign(xy[0, 0])] * 30
    png = plot_gap(a, b, "svd")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match="unknown projection"):
        project_2d(a, b, "tsne")
