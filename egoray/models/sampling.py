"""Sampling with a seed per row, so that a sample depends on its item, never on its batch.

``generate(do_sample=True)`` draws every row of a batch from one global random stream: what an
item gets depends on which items share its batch and in which order, so two actors, or a run
killed and resumed, would write different rows. Here each row has its own ``torch.Generator``
seeded from (config seed, item id, sample index, attempt) — :func:`row_seed` — and sampling is
the Gumbel-max trick: ``argmax(log p + G)`` with ``G`` drawn from the row's generator is a draw
from ``p``. :class:`RowSeededSampler` goes last in the logits processors of a *greedy*
``generate`` (after temperature, top-k and top-p), which then picks exactly that token.
"""

from __future__ import annotations

from typing import Any

import torch

from egoray.data.seeds import row_seed

__all__ = ["RowSeededSampler", "row_seed", "sampling_kwargs"]


class RowSeededSampler:
    """A ``LogitsProcessor``: temperature / top-k / top-p, then Gumbel noise from each row's own
    generator. Row ``r``'s ``t``-th draw is the same whatever else is in the batch."""

    def __init__(self, seeds: list[int], temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.warpers: list[Any] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows but {len(self.generators)} seeds")
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
        return scores.float() + gumbel.to(device=scores.device, dtype=torch.float32)


def sampling_kwargs(seeds: list[int], do_sample: bool, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> dict[str, Any]:
    """``generate`` keyword arguments for per-row seeded sampling (or plain greedy decoding)."""
    if not do_sample:
        return {"do_sample": False}
    return {"do_sample": False, "logits_processor": [RowSeededSampler(seeds, temperature, top_k, top_p)]}
