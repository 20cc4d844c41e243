"""LaViLa's video–text dual encoder, trained end to end from frames.

The visual tower is an open_clip ViT (initialised from a CLIP checkpoint, or random for tiny
models) over ``num_frames`` frames per clip, in one of two ways:

- ``space_time`` (LaViLa's): the Frozen-in-Time space–time transformer
  (:mod:`egoray.models.timesformer`) inflated from the CLIP ViT as LaViLa does, one class token
  for the clip; its temporal attention starts at zero;
- ``average``: every frame through the image tower, the clip embedding is the frames' mean.

With ``embed_dim`` other than CLIP's, both projections are new (LaViLa's ``image_projection`` and
``text_projection``); otherwise CLIP's own are kept.

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
    temporal: Literal["space_time", "average"] = Field(
        "space_time", description="LaViLa's space–time transformer over the frames, or the mean of CLIP's frame embeddings")
    num_frames: int = Field(4, ge=1)
    text: str = Field("open_clip", description="open_clip (the CLIP model's text tower) or a transformers encoder")
    context_length: int = Field(77, ge=4, description="text tokens (transformers encoders)")
    embed_dim: int | None = Field(None, description="joint space width (default: the CLIP model's)")
    norm_embed: bool = Field(True, description="L2-normalise both embeddings (LaViLa --norm-embed)")
    init_temperature: float = Field(0.07, gt=0)
    init_pseudo_temperature: float = Field(0.07, gt=0)


class VideoTower(nn.Module):
    """A CLIP image tower over clips: [B, T, 3, H, W] → [B, E].

    ``space_time``: LaViLa's space–time transformer inflated from the CLIP ViT
    (:mod:`egoray.models.timesformer`), the clip's class token projected. ``average``: each frame
    through the CLIP image tower, the frames' projected embeddings averaged.
    """

    def __init__(self, visual: nn.Module, num_frames: int, temporal: str, embed_dim: int | None = None) -> None:
        super().__init__()
        from egoray.models.timesformer import from_open_clip

        self.temporal_mode = temporal
        self.gradient_checkpointing = False
        clip_proj = visual.proj
        width = int(visual.conv1.out_channels)
        if temporal == "space_time":
            self.visual: nn.Module = from_open_clip(visual, num_frames)
        else:
            visual.proj = None  # ours below
            self.visual = visual
        if clip_proj is None or (embed_dim is not None and embed_dim != clip_proj.shape[1]):
            # a new joint space: LaViLa's image_projection, normal(std = width ** -0.5)
            self.proj = nn.Parameter(torch.randn(width, embed_dim or width) * width**-0.5)
        else:  # CLIP's own projection, as LaViLa loads it when the widths agree
            self.proj = nn.Parameter(clip_proj.detach().clone())

    @property
    def width(self) -> int:
        return int(self.visual.width) if self.temporal_mode == "space_time" else int(self.visual.conv1.out_channels)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if self.temporal_mode == "space_time":
            self.visual.gradient_checkpointing = self.gradient_checkpointing
            return self.visual(frames) @ self.proj
        b, t = frames.shape[:2]
        return (self.visual(frames.flatten(0, 1)) @ self.proj).view(b, t, -1).mean(1)

    def tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """The clip's tokens after the final norm: what LaViLa's narrator attends to —
        ``1 + T·P`` of them (the class token, then every patch of every frame) for ``space_time``,
        ``T·(1 + P)`` (each frame's class token and patches) for ``average``."""
        if self.temporal_mode == "space_time":
            return self.visual.forward_features(frames)
        b = frames.shape[0]
        visual = self.visual
        x = visual.ln_post(visual.transformer(visual._embeds(frames.flatten(0, 1))))
        return x.reshape(b, -1, x.shape[-1])


class OpenClipText(nn.Module):
    """The text half of an open_clip CLIP model (its image tower removed)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


class HFText(nn.Module):
    """A transformers encoder (DistilBERT, BERT, ...): the first token's state, projected
    (LaViLa's ``CLIP_HF`` with ``text_use_cls_token``; projection normal(std = width ** -0.5))."""

    def __init__(self, name: str, embed_dim: int) -> None:
        super().__init__()
        from transformers import AutoModel

        from egoray.models.tiny import resolve_model

        self.encoder = AutoModel.from_pretrained(resolve_model(name))
        width = self.encoder.config.hidden_size
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

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
        self.video = VideoTower(visual, config.num_frames, config.temporal, embed_dim)
        if config.text == "open_clip":
            if embed_dim != clip_dim:  # a new joint space: LaViLa's text_projection, normal(std = width ** -0.5)
                if not isinstance(clip.text_projection, nn.Parameter):
                    raise ValueError(f"embed_dim {embed_dim} needs a CLIP whose text projection is a matrix")
                width = clip.text_projection.shape[0]
                clip.text_projection = nn.Parameter(torch.randn(width, embed_dim) * width**-0.5)
            self.text = OpenClipText(clip)
            self.tokenizer: Any = tokenizer
        else:
            from transformers import AutoTokenizer

            from egoray.models.tiny import resolve_model

            self.text = HFText(config.text, embed_dim)
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.text))
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

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.config.norm_embed else x

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        return self._out(self.video(frames))

    def encode_text(self, tokens: Any) -> torch.Tensor:
        return self._out(self.text(tokens))

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
    return VideoTower(clip.visual, config.num_frames, config.temporal, config.embed_dim), image


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
