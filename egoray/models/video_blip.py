"""BLIP-2 trained as VideoBLIP / EILEV: the loss of interleaved clip–text sequences, and EILEV's
frame transforms for training and held-out clips.

The model is ``Blip2ForConditionalGeneration`` with a forward that takes ``[batch, clips, frames,
3, H, W]`` pixels and an :func:`egoray.models.interleave.interleave` layout: every clip becomes a visual
prompt (its frames' tokens concatenated before the Q-Former), placed at its placeholders, and the
language model is trained teacher-forced on the target only. Parameter names are BLIP-2's, so the
trained Q-Former loads into the plain model for narration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import transformers

from egoray.models.interleave import embed_interleaved
from egoray.models.vlm import clip_prompts

TRAINED = ("qformer", "query_tokens", "language_projection")  # VideoBLIP / EILEV train these only


class VideoBlip2(transformers.Blip2ForConditionalGeneration):
    """BLIP-2 whose forward is the loss of a batch of interleaved clips and texts."""

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                video_mask: torch.Tensor, labels: torch.Tensor) -> Any:  # type: ignore[override]
        visual = clip_prompts(self, pixel_values.flatten(0, 1))  # [batch * clips, Q, width]
        embeds = embed_interleaved(self, input_ids, video_mask, visual)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)


def freeze_backbones(model: torch.nn.Module) -> list[str]:
    """Freeze everything but the Q-Former, its queries and the projection, and the Q-Former's text
    feed-forward layers (queries never use them: they would get no gradient). Returns the frozen names."""
    frozen = []
    for name, p in model.named_parameters():
        text_ffn = name.startswith("qformer.") and (".intermediate." in name or ".output." in name) \
            and "_query" not in name and ".attention." not in name and ".crossattention." not in name
        if not name.startswith(TRAINED) or text_ffn:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def _normalised(video: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 ``[T, 3, H, W]`` → floats on 0–1, normalised per channel."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (video.to(torch.float32) / 255.0 - m) / s


def train_transform(size: int, mean: list[float], std: list[float], magnitude: float = 5) -> Callable[..., Any]:
    """EILEV's training transform of a stored clip (uint8 ``[T, 3, H, W]``, kept at twice the
    processor's size) → normalised floats ``[T, 3, size, size]``: pytorchvideo's
    ``RandAugment(magnitude)`` on the uint8 frames, normalisation, a random resized crop of
    50–100 % of the area at 3/4–4/3 aspect resized bicubic to ``size``, a horizontal flip half the
    time — one draw for all frames of the clip, in EILEV's order."""
    from egoray.video.clip_augment import RandAugment, random_resized_crop

    augment = RandAugment(magnitude=magnitude)

    def transform(video: torch.Tensor) -> torch.Tensor:
        x = _normalised(augment(video), mean, std)
        x = random_resized_crop(x.transpose(0, 1), size).transpose(0, 1)  # pytorchvideo's [C, T, H, W]
        return x.flip(-1) if torch.rand(1) < 0.5 else x  # torchvision's RandomHorizontalFlip

    return transform


def eval_transform(size: int, mean: list[float], std: list[float]) -> Callable[..., Any]:
    """EILEV's held-out transform: the stored frames resized to ``size`` (bicubic, antialiased),
    normalised."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    def transform(video: torch.Tensor) -> torch.Tensor:
        if video.shape[-1] != size or video.shape[-2] != size:
            video = F.resize(video, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return _normalised(video, mean, std)

    return transform


def to_pixels(clips: np.ndarray, transform: Callable[..., Any], seeds: list[int] | None = None) -> torch.Tensor:
    """``[clips, frames, 3, H, W]`` model inputs from uint8 ``[clips, frames, H, W, 3]``, clip ``i``
    transformed under torch seed ``seeds[i]`` (reproducible random augmentation)."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 1, 4, 2, 3)
    out = []
    for i, clip in enumerate(x):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[i]) if seeds else i)
            out.append(transform(clip))
    return torch.stack(out)
