"""LaViLa's training augmentation of clips, drawn per clip per epoch from the stored frames."""

from __future__ import annotations

import numpy as np
import pytest

from egoray.video.augment import jittered_frames, random_resized_crop


def test_one_candidate_of_each_segment_per_epoch():
    # 4 segments x 3 candidates; frame k holds the value k everywhere
    frames = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((12, 2, 2, 3), np.uint8)
    draws = np.array([jittered_frames(frames, 4, 0, e, "clip")[:, 0, 0, 0] for e in range(60)])
    assert draws.shape == (60, 4)
    for segment in range(4):  # always its own segment's candidates, each of them over the epochs
        assert set(draws[:, segment]) == {3 * segment, 3 * segment + 1, 3 * segment + 2}
    assert (jittered_frames(frames, 4, 0, 7, "clip") == jittered_frames(frames, 4, 0, 7, "clip")).all()
    assert len({tuple(jittered_frames(frames, 4, 0, 7, c)[:, 0, 0, 0]) for c in "abcdefgh"}) > 1  # per clip
    with pytest.raises(ValueError, match="segments"):
        jittered_frames(frames[:11], 4, 0, 1, "clip")


def test_random_resized_crop_is_torchvisions_with_one_box_per_clip():
    """The box is drawn as torchvision's RandomResizedCrop draws it (area 0.5–1 of the frame,
    aspect 3/4–4/3) from a generator seeded by (seed, epoch, clip): run through torchvision
    itself with that seed, the same output; every frame of the clip cut the same way."""
    import torch
    from torchvision.transforms import v2

    from egoray.data.seeds import row_seed

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (3, 40, 72, 3), dtype=np.uint8)  # a 16:9 frame's shorter side 40
    out = random_resized_crop(clip, 32, (0.5, 1.0), (3 / 4, 4 / 3), 1, 2, "c")
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32
    torch.manual_seed(row_seed(1, "crop", 2, "c"))
    video = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    expected = v2.RandomResizedCrop(32, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)(video)
    assert np.allclose(out, expected.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    # identical frames stay identical: one box for the whole clip
    same = np.repeat(clip[:1], 3, axis=0)
    cut = random_resized_crop(same, 32, (0.5, 1.0), (3 / 4, 4 / 3), 1, 5, "c")
    assert np.array_equal(cut[0], cut[1]) and np.array_equal(cut[0], cut[2])
    # the crops' areas: a frame whose pixels count columns shows the box's width
    cols = np.broadcast_to(np.arange(72, dtype=np.uint8)[None, None, :, None], (1, 40, 72, 3)).copy()
    widths = [np.ptp(random_resized_crop(cols, 32, (0.5, 1.0), (3 / 4, 4 / 3), 0, e, "w")[0, 0, :, 0])
              for e in range(30)]
    assert len({round(w) for w in widths}) > 5 and max(widths) <= 71 and min(widths) > 0.5 * 40 * 0.75 - 2
