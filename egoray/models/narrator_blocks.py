"""The narrator's blocks, as LaViLa writes them: the attention pooler that summarises a window's
visual tokens, the gated cross-attention placed before a frozen LM's decoder layers, and the
wrapper that feeds a decoder layer the current visual tokens."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BiasFreeLayerNorm(nn.Module):
    """LayerNorm with a learned gain and no bias (LaViLa's ``coca.LayerNorm``: its beta is a zero buffer)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], self.weight, None)


class AttentionPooler(nn.Module):
    """Learned queries attend over a window's visual tokens: ``[B, N, Dv] -> [B, Q, E]``.

    LaViLa's ``img_attn_pool`` + ``img_attn_pool_norm`` (``coca.CrossAttention`` with
    ``norm_context``): queries and context layer-normed without bias, multi-query attention (one
    key/value head of ``dim_head`` shared by ``heads`` query heads), bias-free projections, no
    residual, and a bias-free LayerNorm on the output.
    """

    def __init__(self, video_dim: int, width: int, num_queries: int, heads: int, dim_head: int = 64,
                 standardise: bool = False) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.standardise = nn.BatchNorm1d(video_dim, affine=False) if standardise else None
        self.queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        self.ln_q = BiasFreeLayerNorm(width)
        self.ln_kv = BiasFreeLayerNorm(video_dim)
        self.to_q = nn.Linear(width, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(video_dim, 2 * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, width, bias=False)
        self.ln_out = BiasFreeLayerNorm(width)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.standardise is not None:
            frames = self.standardise(frames.flatten(0, 1)).view_as(frames)
        b = frames.shape[0]
        q = self.to_q(self.ln_q(self.queries)).view(-1, self.heads, self.dim_head).transpose(0, 1)  # [H, Q, d]
        k, v = self.to_kv(self.ln_kv(frames)).chunk(2, dim=-1)  # [B, N, d] each: one head for all
        weights = torch.einsum("hqd,bnd->bhqn", q * self.dim_head**-0.5, k).softmax(-1)
        out = torch.einsum("bhqn,bnd->bqhd", weights, v).reshape(b, -1, self.heads * self.dim_head)
        return self.ln_out(self.to_out(out))


class CrossAttention(nn.Module):
    """GPT-2's cross-attention (``GPT2Attention(is_cross_attention=True)``): queries from the
    text, keys and values from the visual tokens (both of the LM's width), biased projections,
    dropout on the attention weights and on the output."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"the LM's width {width} is not divisible by its {heads} heads")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        b, n, width = x.shape
        d = width // self.heads
        q = self.q(x).view(b, n, self.heads, d).transpose(1, 2)
        k, v = (t.view(b, -1, self.heads, d).transpose(1, 2) for t in self.kv(visual).split(width, dim=-1))
        weights = self.attn_dropout((q @ k.transpose(-1, -2) / d**0.5).softmax(-1))
        return self.resid_dropout(self.proj((weights @ v).transpose(1, 2).reshape(b, n, width)))


class SquaredReLUFeedForward(nn.Module):
    """LaViLa's ``mlp_crossattention``: GPT-2's MLP with a squared ReLU (Primer), then dropout."""

    def __init__(self, width: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, inner)
        self.proj = nn.Linear(inner, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(torch.relu(self.fc(x)) ** 2))


class GatedCrossAttention(nn.Module):
    """LaViLa's gated cross-attention before a GPT-2 block (``gpt2_gated.GPT2Block``):
    ``x + tanh(a) * xattn(ln(x), visual)``, then ``x + tanh(b) * ff(ln(x))``; the identity
    while both gates are zero, as at initialisation.

    Initialised as GPT-2 initialises new weights (``_init_weights``): normal(0, 0.02), zero biases,
    the output projections normal(0, 0.02 / sqrt(2 * layers)).
    """

    def __init__(self, width: int, heads: int, inner: int, dropout: float, eps: float = 1e-5,
                 lm_layers: int = 1, init_std: float = 0.02) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width, eps=eps)
        self.attn = CrossAttention(width, heads, dropout)
        self.attn_gate = nn.Parameter(torch.zeros(1))  # [1], not 0-d: DeepSpeed broadcasts byte views
        self.ln_ff = nn.LayerNorm(width, eps=eps)
        self.ff = SquaredReLUFeedForward(width, inner, dropout)
        self.ff_gate = nn.Parameter(torch.zeros(1))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith("proj.weight"):
                nn.init.normal_(p, std=init_std / (2 * lm_layers) ** 0.5)
            elif p.dim() == 2:
                nn.init.normal_(p, std=init_std)

    def forward(self, x: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        if visual.shape[0] != x.shape[0]:
            raise ValueError(f"visual tokens for {visual.shape[0]} sequences, text for {x.shape[0]}")
        visual = visual.to(x.dtype)
        x = x + torch.tanh(self.attn_gate) * self.attn(self.ln(x), visual)
        return x + torch.tanh(self.ff_gate) * self.ff(self.ln_ff(x))


class VisualTokens:
    """The visual tokens of the current forward/generate call, shared by all gated layers."""

    tokens: torch.Tensor | None = None


class GatedLayer(nn.Module):
    """A frozen decoder layer preceded by gated cross-attention to the current visual tokens."""

    def __init__(self, layer: nn.Module, xattn: GatedCrossAttention, visual: VisualTokens) -> None:
        super().__init__()
        self.layer = layer
        self._xattn = (xattn,)  # registered once, on the Narrator: the LM's own state dict stays the LM's
        self._visual = visual
        self.checkpointing = False

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        visual = self._visual.tokens
        if visual is None:
            raise RuntimeError("narrator called without visual tokens")
        if self.checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(lambda h, v: self.layer(self._xattn[0](h, v), *args, **kwargs), hidden_states, visual,
                              use_reentrant=False)
        return self.layer(self._xattn[0](hidden_states, visual), *args, **kwargs)


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a transformers causal LM (GPT-2, Llama, GPT-NeoX, OPT)."""
    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
        obj: Any = lm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the decoder layers of {type(lm).__name__}")
