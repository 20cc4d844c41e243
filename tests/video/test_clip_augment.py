"""EILEV's augmentation (pytorchvideo's RandAugment and RandomResizedCrop) against pytorchvideo's
code written out in ``tests/pytorchvideo_reference.py``: the same outputs under the same torch seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egoray.video import clip_augment
from tests import pytorchvideo_reference as ref


def _clip(seed: int = 0, frames: int = 4, h: int = 24, w: int = 32) -> torch.Tensor:
    """A uint8 clip [T, 3, H, W] with structure (gradients and a bright square) and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=0)
    clip = np.stack([base + rng.integers(-20, 20, base.shape) for _ in range(frames)])
    clip[:, :, 4:10, 6:14] = 250
    return torch.from_numpy(np.clip(clip, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("name", list(clip_augment.OPERATIONS))
def test_each_operation_equals_pytorchvideo(name: str) -> None:
    clip = _clip()
    for level in (0.0, 4.6, 10.0):
        for seed in range(2):  # the signed operations negate on a draw
            torch.manual_seed(seed)
            ours = clip_augment.OPERATIONS[name](clip, level)
            torch.manual_seed(seed)
            op = ref.AugmentTransform(name, level, prob=1.0)
            args = op.level_fn(level, op.level_paras) if op.level_fn is not None else ()
            theirs = op.transform_fn(clip, *args, **ref.FILL)
            assert ours.dtype == torch.uint8 and ours.shape == clip.shape
            assert torch.equal(ours, theirs), (name, level, seed)


def test_rand_augment_equals_pytorchvideo_under_the_same_seed() -> None:
    changed = 0
    for seed in range(60):
        clip = _clip(seed)
        torch.manual_seed(seed)
        ours = clip_augment.RandAugment(magnitude=5)(clip)
        after_ours = torch.rand(1)
        torch.manual_seed(seed)
        theirs = ref.RandAugment(magnitude=5)(clip)
        assert torch.equal(ours, theirs), seed
        assert torch.equal(after_ours, torch.rand(1))  # the same number of draws
        changed += not torch.equal(ours, clip)
    # two operations at p = 0.5 each: a clip is left alone a quarter of the time (some ops at
    # magnitude ~5 may still change nothing); most are changed
    assert 30 <= changed < 60


def test_random_resized_crop_equals_pytorchvideo() -> None:
    video = torch.rand(3, 4, 40, 56)  # [C, T, H, W] floats
    for seed in range(20):
        torch.manual_seed(seed)
        ours = clip_augment.random_resized_crop(video, 16)
        torch.manual_seed(seed)
        theirs = ref.random_resized_crop(video, 16, 16, (0.5, 1.0), (3 / 4, 4 / 3), interpolation="bicubic")
        assert ours.shape == (3, 4, 16, 16)
        assert torch.equal(ours, theirs)


def test_crop_box_falls_back_to_the_centre() -> None:
    # a frame far wider than any allowed aspect: no try fits, the centre crop at the widest aspect
    torch.manual_seed(0)
    top, left, h, w = clip_augment.crop_box(10, 200, (0.9, 1.0), (3 / 4, 4 / 3))
    assert (top, left, h, w) == ref._get_param_spatial_crop((0.9, 1.0), (3 / 4, 4 / 3), 10, 200) == (0, 93, 10, 13)


def test_eilevs_train_and_held_out_transforms() -> None:
    """video_blip's transforms of a stored clip ([T, 3, H, W] at twice the size) equal EILEV's
    pytorchvideo pipelines (on [C, T, H, W]) under the same seed."""
    from egoray.models.video_blip import eval_transform, train_transform

    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    ours_train, ours_eval = train_transform(16, mean, std), eval_transform(16, mean, std)
    theirs_train = ref.eilev_train_transform(16, mean, std, num_frames=4)
    theirs_eval = ref.eilev_eval_transform(16, mean, std, num_frames=4)
    for seed in range(12):
        clip = _clip(seed, h=32, w=32)
        torch.manual_seed(seed)
        ours = ours_train(clip)
        torch.manual_seed(seed)
        theirs = theirs_train(clip.transpose(0, 1)).transpose(0, 1)
        assert ours.shape == (4, 3, 16, 16) and torch.equal(ours, theirs), seed
        assert torch.equal(ours_eval(clip), theirs_eval(clip.transpose(0, 1)).transpose(0, 1))
    torch.manual_seed(0)
    first, second = ours_train(clip), ours_train(clip)
    assert not torch.equal(first, second)  # a second draw differs: the transform is random
