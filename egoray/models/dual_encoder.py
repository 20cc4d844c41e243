"""CLIP-style dual encoder over precomputed features, and its contrastive losses.

The encoders themselves (video backbone, text model) are frozen upstream; training learns one
projection head per modality into a shared space and a temperature, as in the CLEP notebook,
with LaViLa's optional second temperature for auxiliary (rephrased / narrator) pairs.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from egoray.config import StrictModel

MAX_LOGIT_SCALE = math.log(100.0)


class DualEncoderConfig(StrictModel):
    """Shape of the heads; stored next to the weights so a model loads without its job config.

    ``normalize: false`` with ``scale: raw`` is seed 001's (CLEP's) ``ClipModel``: unnormalised
    projections, and a logit scale that is the parameter itself (initialised ln(1/T), kept in
    [0, ln 100]) rather than CLIP's exp of it.
    """

    video_dim: int = 0
    text_dim: int = 0
    embed_dim: int = 256
    hidden_dim: int = 512
    init_temperature: float = 0.07
    normalize: bool = Field(True, description="L2-normalise both embeddings (false: the CLEP notebook's raw heads)")
    scale: Literal["exp", "raw"] = Field("exp", description="logits × exp(s) (CLIP), or × s itself in [0, ln 100] "
                                                            "(the CLEP notebook)")


def _head(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    head = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))
            nn.init.zeros_(m.bias)
    return head


class DualEncoder(nn.Module):
    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.video_proj = _head(config.video_dim, config.hidden_dim, config.embed_dim)
        self.text_proj = _head(config.text_dim, config.hidden_dim, config.embed_dim)
        init = math.log(1.0 / config.init_temperature)
        # shape [1], not a scalar: DeepSpeed broadcasts parameters as byte views, which 0-d tensors refuse
        self.logit_scale = nn.Parameter(torch.full((1,), init))
        self.aux_logit_scale = nn.Parameter(torch.full((1,), init))
        self.gradient_checkpointing = False

    def _project(self, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            y = checkpoint(head, x, use_reentrant=False)
        else:
            y = head(x)
        return F.normalize(y, dim=-1) if self.config.normalize else y

    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(self.video_proj, x)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(self.text_proj, x)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit scales of the main and auxiliary pairs: exp of the parameters clamped to
        ≤ ln 100, or (``scale: raw``) the parameters themselves clamped to [0, ln 100]."""
        if self.config.scale == "raw":
            return (self.logit_scale.clamp(0, MAX_LOGIT_SCALE).squeeze(0),
                    self.aux_logit_scale.clamp(0, MAX_LOGIT_SCALE).squeeze(0))
        return (self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().squeeze(0),
                self.aux_logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().squeeze(0))

    def clamp_scales(self) -> None:
        """After an optimiser step, as the CLEP notebook and CLIP do: keep a raw scale's parameter
        in [0, ln 100] (so that a gradient can bring it back from a bound)."""
        if self.config.scale == "raw":
            with torch.no_grad():
                self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                self.aux_logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def forward(self, video: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Embeddings and both scales (returned so ZeRO-3 gathers them in forward)."""
        scale, aux_scale = self.scales()
        return self.encode_video(video), self.encode_text(text), scale, aux_scale


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                     positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised ``video`` [B, E] and ``text`` [B, E].

    ``scale`` is one logit scale, or a symmetric [B, B] matrix of them (:func:`pair_scales`).

    ``positives`` [B, B] bool marks extra positives (EgoNCE: same verb and noun); the diagonal is
    always positive. Each row's loss is ``-log(sum over positives / sum over all)`` of
    ``exp(scale * cosine)``, which is plain InfoNCE when only the diagonal is positive.
    """
    logits = scale * (video @ text.t())
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    if positives is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    pos = positives | eye
    neg_inf = torch.finfo(logits.dtype).min

    def side(lg: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(lg, dim=1) - torch.logsumexp(lg.masked_fill(~p, neg_inf), dim=1)).mean()

    return (side(logits, pos) + side(logits.t(), pos.t())) / 2


def pair_scales(human: torch.Tensor, scale: torch.Tensor, pseudo_scale: torch.Tensor) -> torch.Tensor:
    """[B, B] logit scales of a batch mixing human and pseudo pairs (LaViLa): ``scale`` between
    two human pairs, ``pseudo_scale`` between two pseudo pairs, their geometric mean across."""
    h = human.to(scale.dtype)
    both = h[:, None] * h[None, :]
    neither = (1 - h)[:, None] * (1 - h)[None, :]
    return both * scale + neither * pseudo_scale + (1 - both - neither) * torch.sqrt(scale * pseudo_scale)


def same_label(verb: torch.Tensor, noun: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: both items have known (≥ 0) and equal verb and noun."""
    known = (verb >= 0) & (noun >= 0)
    return (verb[:, None] == verb[None, :]) & (noun[:, None] == noun[None, :]) & known[:, None] & known[None, :]


def save_dual_encoder(model: DualEncoder) -> dict[str, Any]:
    return {"kind": "dual_encoder", "config": model.config.model_dump(), "state_dict": model.state_dict()}


def load_dual_encoder(url: str) -> DualEncoder:
    """A trained dual encoder from a ``train_dual_encoder`` output (or its model.pt)."""
    from egoray.models.checkpoint import load_exported_kind

    blob = load_exported_kind(url, "dual_encoder", "a dual encoder")
    model = DualEncoder(DualEncoderConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
