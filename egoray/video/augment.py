"""LaViLa's training-time video augmentation, drawn per clip per epoch from stored frames.

LaViLa decodes every training clip each epoch: one random frame in each of the ``T`` segments
of its window (``get_frame_ids(jitter=True)``) and one ``RandomResizedCrop(224, scale=(0.5, 1))``
for the whole clip. egoray decodes once, keeping ``per_segment`` candidate frames of each segment
as whole frames (:class:`egoray.stages.clips.DecodeClips` with ``augment_splits``), and draws here:
a candidate per segment, then torchvision's own ``RandomResizedCrop`` (the same box for every
frame), each from a generator seeded by (seed, epoch, clip id) — the same draws in any run, on
any worker, after any resume.
"""

from __future__ import annotations

import numpy as np

from egoray.data.seeds import row_seed


def jittered_frames(frames: np.ndarray, num_frames: int, seed: int, epoch: int, clip_id: str) -> np.ndarray:
    """One of the stored candidates of each segment: ``[T·K, ...]`` → ``[T, ...]``."""
    per_segment, rest = divmod(len(frames), num_frames)
    if rest or per_segment < 1:
        raise ValueError(f"{len(frames)} stored frames are not {num_frames} segments of candidates")
    rng = np.random.default_rng(row_seed(seed, "jitter", epoch, clip_id))
    picks = np.arange(num_frames) * per_segment + rng.integers(per_segment, size=num_frames)
    return frames[picks]


def random_resized_crop(frames: np.ndarray, size: int, scale: tuple[float, float], ratio: tuple[float, float],
                        seed: int, epoch: int, clip_id: str) -> np.ndarray:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` of a clip, one box for all its
    frames (bilinear, antialiased, as on LaViLa's float frames): uint8 ``[T, H, W, 3]`` →
    float32 ``[T, size, size, 3]`` on the 0–255 scale."""
    import torch
    from torchvision.transforms import v2

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
    with torch.random.fork_rng(devices=[]):  # torchvision draws from torch's generator
        torch.manual_seed(row_seed(seed, "crop", epoch, clip_id))
        box = (crop.make_params if hasattr(crop, "make_params") else crop._get_params)([video])
    out = v2.functional.resized_crop(video, **box, size=[size, size], antialias=True)
    return out.permute(0, 2, 3, 1).numpy()
