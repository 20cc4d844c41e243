"""LaViLa's video encoder: the Frozen-in-Time space–time transformer (``SpaceTimeTransformer``).

One class token for the whole clip; ``F`` frames of ``N`` patches each. Every block runs a
temporal attention (each patch position across the frames) and then a spatial attention (the
patches of each frame) on ``norm1(x + time_out)`` with the residual taken from ``x``; in both the
class token's query attends to every token, and its key and value join each group. The time
embedding is added to the patch tokens only, and the clip's embedding is the class token after
the final norm. Parameter names are LaViLa's (``lavila/models/timesformer.py``), so its
checkpoints load by name; :func:`from_open_clip` inflates a CLIP image tower into it as LaViLa's
``remap_keys`` does (temporal attention zero-initialised: an untrained tower is CLIP on each
frame, with one class token attending over all of them).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation, ``x * sigmoid(1.702 x)`` (LaViLa's OpenAI-initialised towers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class VarAttention(nn.Module):
    """Multi-head attention within groups of patch tokens (one frame, or one position across
    frames); the class token (index 0) attends to all tokens and is a key/value in every group."""

    def __init__(self, dim: int, heads: int, zero_init: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if zero_init:  # LaViLa's time_init='zeros': q = k = v = 0, the projection's weight at 1
            nn.init.zeros_(self.qkv.weight)
            nn.init.zeros_(self.qkv.bias)
            nn.init.ones_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, frames: int, over: Literal["space", "time"]) -> torch.Tensor:
        b, length, dim = x.shape
        h, d = self.heads, dim // self.heads
        n = (length - 1) // frames
        q, k, v = (t.reshape(b, length, h, d).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))  # [B, H, L, d]
        q = q * self.scale
        cls_out = (q[:, :, :1] @ k.transpose(-1, -2)).softmax(-1) @ v  # [B, H, 1, d]

        def groups(t: torch.Tensor) -> torch.Tensor:  # [B, H, F·N, d] -> [B, H, G, S, d]
            t = t[:, :, 1:].reshape(b, h, frames, n, d)
            return t if over == "space" else t.transpose(2, 3)

        qg, kg, vg = groups(q), groups(k), groups(v)
        g = qg.shape[2]
        kg = torch.cat([k[:, :, None, :1].expand(-1, -1, g, -1, -1), kg], dim=3)
        vg = torch.cat([v[:, :, None, :1].expand(-1, -1, g, -1, -1), vg], dim=3)
        out = (qg @ kg.transpose(-1, -2)).softmax(-1) @ vg  # [B, H, G, S, d]
        if over == "time":
            out = out.transpose(2, 3)
        out = torch.cat([cls_out, out.reshape(b, h, frames * n, d)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SpaceTimeBlock(nn.Module):
    """Time attention, then space attention on ``norm1(x + time)`` with the residual from ``x``
    (LaViLa's ``attention_style='frozen-in-time'``), then the MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, act: nn.Module, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = VarAttention(dim, heads)
        self.timeattn = VarAttention(dim, heads, zero_init=True)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        time_out = self.timeattn(self.norm3(x), frames, "time")
        space_out = self.attn(self.norm1(x + time_out), frames, "space")
        x = x + space_out
        return x + self.mlp(self.norm2(x))


class SpaceTimeTransformer(nn.Module):
    """Frames ``[B, T, 3, H, W]`` → the clip's class token ``[B, D]`` (or all ``1 + T·N`` tokens)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, num_frames: int = 4,
                 act: Literal["quick_gelu", "gelu"] = "quick_gelu") -> None:
        super().__init__()
        self.num_frames, self.width, self.patch_size = num_frames, width, patch_size
        self.patches_per_frame = (image_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch_size, patch_size, bias=False)  # ln_pre follows: no bias
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, width))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.ln_pre = nn.LayerNorm(width)
        activation = QuickGELU() if act == "quick_gelu" else nn.GELU()
        # LaViLa's norm_layer default: LayerNorm(eps=1e-6), also over CLIP's weights
        self.blocks = nn.ModuleList(SpaceTimeBlock(width, heads, mlp_ratio, activation, 1e-6) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.gradient_checkpointing = False

    def forward_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm: ``[B, 1 + T·N, D]`` (LaViLa's ``cls_at_last=False``)."""
        b, t = frames.shape[:2]
        if t > self.num_frames:
            raise ValueError(f"{t} frames for a tower of at most {self.num_frames}")
        x = self.patch_embed.proj(frames.flatten(0, 1))  # [B·T, D, h, w]
        x = x.flatten(2).transpose(1, 2).reshape(b, -1, self.width)  # frame-major: [B, T·N, D]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        n = self.patches_per_frame
        # position repeated per frame ([1,2,3,1,2,3,…]), time repeated within it ([1,1,1,2,2,2,…])
        patches = self.pos_embed[:, 1:].repeat(1, self.num_frames, 1) + self.temporal_embed.repeat_interleave(n, 1)
        x = x + torch.cat([self.pos_embed[:, :1], patches], dim=1)[:, : x.shape[1]]
        x = self.ln_pre(x)
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, t, use_reentrant=False)
            else:
                x = block(x, t)
        return self.norm(x)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.forward_features(frames)[:, 0]


def from_open_clip(visual: Any, num_frames: int) -> SpaceTimeTransformer:
    """A space–time transformer holding an open_clip ``VisionTransformer``'s weights (LaViLa's
    ``remap_keys``: CLIP's class embedding, positions, patch conv, ``ln_pre``, blocks and
    ``ln_post``; the temporal attention, ``norm3`` and the time embedding new)."""
    if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "class_embedding"):
        raise ValueError("the space–time tower inflates a plain CLIP ViT (class token, no attention pooling)")
    blocks = visual.transformer.resblocks
    if any(type(getattr(blocks[0], name, nn.Identity())).__name__ != "Identity" for name in ("ls_1", "ls_2", "ln_attn")):
        raise ValueError("the space–time tower inflates a plain CLIP ViT (no layer scale, no inner norms)")
    size = visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    patch = visual.patch_size
    patch = patch[0] if isinstance(patch, tuple | list) else int(patch)
    width = int(visual.conv1.out_channels)
    first = blocks[0]
    act = "quick_gelu" if type(first.mlp.gelu).__name__ == "QuickGELU" else "gelu"
    mlp_ratio = first.mlp.c_fc.out_features / width
    tower = SpaceTimeTransformer(size, patch, width, len(blocks), first.attn.num_heads, mlp_ratio, num_frames, act)
    state = visual.state_dict()
    remapped = {"cls_token": state["class_embedding"].view(1, 1, -1),
                "pos_embed": state["positional_embedding"].unsqueeze(0),
                "patch_embed.proj.weight": state["conv1.weight"],
                "ln_pre.weight": state["ln_pre.weight"], "ln_pre.bias": state["ln_pre.bias"],
                "norm.weight": state["ln_post.weight"], "norm.bias": state["ln_post.bias"]}
    names = {"attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
             "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
             "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias", "ln_2.weight": "norm2.weight",
             "ln_2.bias": "norm2.bias", "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
             "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}
    for i in range(len(blocks)):
        for theirs, ours in names.items():
            remapped[f"blocks.{i}.{ours}"] = state[f"transformer.resblocks.{i}.{theirs}"]
    missing = tower.load_state_dict(remapped, strict=False).missing_keys
    new = {k for k in missing if ".timeattn." in k or ".norm3." in k} | {"temporal_embed"}
    if set(missing) - new:
        raise ValueError(f"CLIP weights missing for {sorted(set(missing) - new)[:4]}")
    return tower
