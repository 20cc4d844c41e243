"""The optimiser's shape: learning-rate schedules, weight-decay groups, frozen parameters.

Ray-free and DeepSpeed-free, so the maths is tested on its own and shared by every recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

# names of parameters that are never decayed whatever their shape (LaViLa, open_clip and
# torchtune exclude biases, norms, embeddings of position and temperatures the same way)
NO_DECAY_NAMES = ("bias", "norm", "logit_scale", "gate", "temperature", "positional_embedding", "pos_embed",
                  "class_embedding", "cls_token")


def lr_factor(kind: Literal["constant", "cosine", "linear"], step: int, total_steps: int, warmup_steps: int,
              end_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based).

    Linear warmup from ``1/warmup`` to 1 over ``warmup_steps``, then either constant, or a cosine or
    a straight line (Hugging Face Trainer's default) from 1 down to ``end_ratio`` at
    ``total_steps`` (held there if training runs longer).
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return end_ratio + (1 - end_ratio) * (1 - progress)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_fn(kind: Literal["constant", "cosine", "linear"], total_steps: int, warmup_steps: int,
                end_ratio: float) -> Callable[[int], float]:
    """``lr_factor`` as the step → multiplier function ``torch.optim.lr_scheduler.LambdaLR`` takes."""
    return lambda step: lr_factor(kind, step, total_steps, warmup_steps, end_ratio)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """1-d parameters (biases, norm scales, temperatures) and named exceptions keep their size."""
    return param.ndim < 2 or any(key in name.lower() for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float, no_decay_group: bool = True) -> list[dict]:
    """The trainable parameters in two optimiser groups: decayed, and not (empty groups dropped;
    without ``no_decay_group`` every parameter decays, as torch's AdamW does by default)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay_group and is_no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def freeze(model: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Stop gradients to every parameter whose name starts with one of ``prefixes``; their names.

    A prefix that names nothing is an error (a typo would otherwise train what was meant frozen).
    """
    prefixes = list(prefixes)
    names = [n for n, _ in model.named_parameters()]
    frozen = []
    for prefix in prefixes:
        hit = [n for n in names if n.startswith(prefix)]
        if not hit:
            raise ValueError(f"freeze: no parameter is named {prefix!r}… (some are: {names[:6]})")
        frozen += hit
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return sorted(set(frozen))
