"""BLIP-2 trained as VideoBLIP / EILEV: the loss of interleaved clip–text sequences, and the frame
augmentation EILEV trains with.

The model is ``Blip2ForConditionalGeneration`` with a forward that takes ``[batch, clips, frames,
3, H, W]`` pixels and an :func:`egoray.models.vlm.interleave` layout: every clip becomes a visual
prompt (its frames' tokens concatenated before the Q-Former), placed at its placeholders, and the
language model is trained teacher-forced on the target only. Parameter names are BLIP-2's, so the
trained Q-Former loads into the plain model for narration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import transformers

from egoray.models.vlm import clip_prompts, embed_interleaved

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


def train_transform(size: int, magnitude: int = 5) -> Any:
    """EILEV's training augmentation of a clip (``[frames, 3, H, W]`` uint8, one draw for all its
    frames): RandAugment, a random resized crop of 50–100 % of the area at 3/4–4/3 aspect (bicubic)
    to ``size``, a horizontal flip half the time."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandAugment(magnitude=magnitude),
                       v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3),
                                            interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                       v2.RandomHorizontalFlip()])


def to_pixels(clips: np.ndarray, mean: list[float], std: list[float], transform: Any = None,
              seeds: list[int] | None = None) -> torch.Tensor:
    """``[clips, frames, 3, H, W]`` normalised floats from uint8 ``[clips, frames, H, W, 3]``; with a
    ``transform``, clip ``i`` is augmented under torch seed ``seeds[i]`` (reproducible batches)."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 1, 4, 2, 3)
    if transform is not None:
        out = []
        for i, clip in enumerate(x):
            with torch.random.fork_rng():
                torch.manual_seed(int(seeds[i]) if seeds else i)
                out.append(transform(clip))
        x = torch.stack(out)
    m = torch.tensor(mean).view(1, 1, 3, 1, 1)
    s = torch.tensor(std).view(1, 1, 3, 1, 1)
    return (x.float() / 255.0 - m) / s
