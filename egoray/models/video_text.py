"""LaViLa's video–text dual encoder, trained end to end from frames.

The visual tower is an open_clip ViT (initialised from a CLIP checkpoint, or random for tiny
models) over ``num_frames`` frames per clip, in one of two ways:

- ``average``: every frame through the image tower, the clip embedding is the frames' mean;
- ``divided``: TimeSformer's divided space–time attention — before each of the ViT's blocks a
  temporal attention over the same patch position in every frame, plus a learned time embedding.
  Both start at zero (the temporal attention's output projection and the time embedding), so an
  untrained divided tower is exactly the frame average of its CLIP image tower, as LaViLa
  inflates CLIP into TimeSformer.

The text tower is open_clip's (the same CLIP model's) or a transformers encoder such as
DistilBERT (its first token, projected). Temperatures are learned as in CLIP, with LaViLa's
second (pseudo) temperature for narrator pairs. Ray-free: the training job and the encoders of
``video_features`` / ``text_features`` / ``eval`` share it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from egoray.config import StrictModel
from egoray.models.clip import ClipModel
from egoray.models.dual_encoder import MAX_LOGIT_SCALE


class VideoTextConfig(StrictModel):
    """Both towers; stored with the weights so a model loads without its job config."""

    vision: ClipModel = ClipModel()
    temporal: Literal["divided", "average"] = Field("divided", description="space–time attention or frame mean")
    num_frames: int = Field(4, ge=1)
    text: str = Field("open_clip", description="open_clip (the CLIP model's text tower) or a transformers encoder")
    context_length: int = Field(77, ge=4, description="text tokens (transformers encoders)")
    embed_dim: int | None = Field(None, description="joint space width (default: the CLIP model's)")
    norm_embed: bool = Field(True, description="L2-normalise both embeddings (LaViLa --norm-embed)")
    init_temperature: float = Field(0.07, gt=0)
    init_pseudo_temperature: float = Field(0.07, gt=0)


class TemporalAttention(nn.Module):
    """Attention across frames at each patch position; zero output at initialisation."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``x`` [B·T, 1 + P, W] (class token first); the patch tokens attend over the T frames."""
        bt, length, width = x.shape
        b = bt // frames
        patches = x[:, 1:].reshape(b, frames, length - 1, width).transpose(1, 2).reshape(-1, frames, width)
        h = self.norm(patches)
        h, _ = self.attn(h, h, h, need_weights=False)
        h = self.out(h).reshape(b, length - 1, frames, width).transpose(1, 2).reshape(bt, length - 1, width)
        return torch.cat([x[:, :1], x[:, 1:] + h], dim=1)


class VideoTower(nn.Module):
    """An open_clip ``VisionTransformer`` over clips: [B, T, 3, H, W] → [B, E]."""

    def __init__(self, visual: nn.Module, num_frames: int, temporal: str) -> None:
        super().__init__()
        self.visual = visual
        self.temporal_mode = temporal
        self.gradient_checkpointing = False
        width = int(visual.conv1.out_channels)
        blocks = visual.transformer.resblocks
        if temporal == "divided":
            heads = blocks[0].attn.num_heads
            self.time_embed = nn.Parameter(torch.zeros(num_frames, width))
            self.temporal = nn.ModuleList(TemporalAttention(width, heads) for _ in blocks)

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    def _blocks(self, frames: torch.Tensor) -> torch.Tensor:
        """Every frame's tokens after the ViT's blocks: [B·T, 1 + P, W]."""
        b, t = frames.shape[:2]
        visual = self.visual
        x = visual._embeds(frames.flatten(0, 1))
        if self.temporal_mode == "divided":
            x = (x.view(b, t, *x.shape[1:]) + self.time_embed[None, :t, None, :]).flatten(0, 1)
            batch_first = getattr(visual.transformer, "batch_first", True)
            for block, temporal in zip(visual.transformer.resblocks, self.temporal):
                x = self._run(self._divided_block, x, block, temporal, t, batch_first)
            return x
        return visual.transformer(x)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        pooled, _ = self.visual._pool(self._blocks(frames))
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled.view(b, t, -1).mean(1)

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """The clip's space–time tokens after the final norm, [B, T·(1 + P), W]: what LaViLa's
        narrator attends to (every patch of every frame, and the frames' class tokens)."""
        b = frames.shape[0]
        x = self.visual.ln_post(self._blocks(frames))
        return x.reshape(b, -1, x.shape[-1])

    @staticmethod
    def _divided_block(x: torch.Tensor, block: nn.Module, temporal: nn.Module, frames: int,
                       batch_first: bool) -> torch.Tensor:
        x = temporal(x, frames)
        return block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)

    def _run(self, fn: Any, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, x, *args, use_reentrant=False)
        return fn(x, *args)


class OpenClipText(nn.Module):
    """The text half of an open_clip CLIP model (its image tower removed)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


class HFText(nn.Module):
    """A transformers encoder (DistilBERT, BERT, ...): the first token's state, projected."""

    def __init__(self, name: str, embed_dim: int) -> None:
        super().__init__()
        from transformers import AutoModel

        from egoray.models.tiny import resolve_model

        self.encoder = AutoModel.from_pretrained(resolve_model(name))
        self.proj = nn.Linear(self.encoder.config.hidden_size, embed_dim, bias=False)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return self.proj(out.last_hidden_state[:, 0])


class VideoTextModel(nn.Module):
    """Both towers and the two temperatures; ``forward`` returns what the mixed InfoNCE needs."""

    def __init__(self, config: VideoTextConfig) -> None:
        super().__init__()
        from egoray.models.clip import load_open_clip

        self.config = config
        clip, tokenizer, image = load_open_clip(config.vision)
        clip.train()
        self.image = image
        visual = clip.visual
        clip.visual = None  # the text tower keeps the rest
        clip.logit_scale = None  # ours below (and a pseudo one)
        if hasattr(clip, "logit_bias"):
            clip.logit_bias = None
        clip_dim = int(visual.output_dim)
        embed_dim = config.embed_dim or clip_dim
        self.video = VideoTower(visual, config.num_frames, config.temporal)
        self.video_proj = nn.Linear(clip_dim, embed_dim, bias=False) if embed_dim != clip_dim else None
        if config.text == "open_clip":
            self.text = OpenClipText(clip)
            self.tokenizer: Any = tokenizer
            self.text_proj = nn.Linear(clip_dim, embed_dim, bias=False) if embed_dim != clip_dim else None
        else:
            from transformers import AutoTokenizer

            from egoray.models.tiny import resolve_model

            self.text = HFText(config.text, embed_dim)
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.text))
            self.text_proj = None
        init = math.log(1 / config.init_temperature)
        # shape [1]: DeepSpeed broadcasts parameters as byte views, which 0-d tensors refuse
        self.logit_scale = nn.Parameter(torch.full((1,), init))
        self.aux_logit_scale = nn.Parameter(torch.full((1,), math.log(1 / config.init_pseudo_temperature)))

    def set_gradient_checkpointing(self, on: bool) -> None:
        self.video.gradient_checkpointing = on
        if self.config.temporal == "average":
            self.video.visual.set_grad_checkpointing(on)
        if isinstance(self.text, OpenClipText):
            self.text.clip.transformer.grad_checkpointing = on
        elif on and hasattr(self.text.encoder, "gradient_checkpointing_enable"):
            self.text.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def tokenize(self, texts: list[str]) -> Any:
        """Token ids ([B, L] for open_clip; ids and mask for transformers encoders)."""
        if isinstance(self.text, OpenClipText):
            return self.tokenizer(texts)
        return dict(self.tokenizer(texts, padding="max_length", truncation=True,
                                   max_length=self.config.context_length, return_tensors="pt"))

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] at the tower's size → normalised float [B, T, 3, H, W]."""
        return normalise_frames(frames, self.image)

    def _out(self, x: torch.Tensor, proj: nn.Module | None) -> torch.Tensor:
        x = proj(x) if proj is not None else x
        return F.normalize(x, dim=-1) if self.config.norm_embed else x

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self._out(self.video(frames), self.video_proj)

    def encode_text(self, tokens: Any) -> torch.Tensor:
        return self._out(self.text(tokens), self.text_proj)

    def embed_texts(self, texts: list[str], batch_size: int = 64, normalize: bool = False) -> np.ndarray:
        """Joint-space embeddings of texts, in batches (what ``text_features`` stores)."""
        device = self.logit_scale.device
        chunks = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenize(texts[i:i + batch_size])
                tokens = {k: v.to(device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(device)
                out = self.encode_text(tokens)
                chunks.append((F.normalize(out, dim=-1) if normalize else out).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    def embed_clip(self, frames: np.ndarray, normalize: bool = False) -> np.ndarray:
        """One clip's joint-space embedding [1, E] from its uint8 frames [T, H, W, 3]."""
        with torch.no_grad():
            out = self.encode_video(self.preprocess(frames[None]).to(self.logit_scale.device))
            return (F.normalize(out, dim=-1) if normalize else out).float().cpu().numpy()

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().squeeze(0),
                self.aux_logit_scale.clamp(max=MAX_LOGIT_SCALE).exp().squeeze(0))

    def forward(self, frames: torch.Tensor, tokens: Any) -> tuple[torch.Tensor, ...]:
        scale, pseudo_scale = self.scales()
        return self.encode_video(frames), self.encode_text(tokens), scale, pseudo_scale


def build_video_tower(config: VideoTextConfig) -> tuple[VideoTower, dict[str, Any]]:
    """The video tower alone (the narrator's frozen visual encoder) and its image preprocessing."""
    from egoray.models.clip import load_open_clip

    clip, _, image = load_open_clip(config.vision)
    return VideoTower(clip.visual, config.num_frames, config.temporal), image


def normalise_frames(frames: np.ndarray, image: dict[str, Any]) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] at the tower's size → normalised float [B, T, 3, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255)
    mean = torch.tensor(image["mean"]).view(1, 1, 3, 1, 1)
    std = torch.tensor(image["std"]).view(1, 1, 3, 1, 1)
    return (x.permute(0, 1, 4, 2, 3) - mean) / std


def export_config(config: VideoTextConfig) -> dict[str, Any]:
    """The config to store with trained weights: no pretrained tag (the weights are all there)."""
    return config.model_copy(update={"vision": config.vision.model_copy(update={"pretrained": None})}).model_dump()


def load_video_text(url: str) -> VideoTextModel:
    """A trained video–text model from a ``train_video_text`` output (or its model.pt)."""
    from egoray.models.checkpoint import load_exported_kind

    blob = load_exported_kind(url, "video_text", "a video–text model")
    model = VideoTextModel(VideoTextConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
