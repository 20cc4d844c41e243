"""Text encoders behind one interface: sentence-transformers models and open_clip text towers."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from egoray.config import StrictModel
from egoray.models.clip import ClipModel


class TextEncoderConfig(StrictModel):
    """``sentence_transformers`` (e.g. ``all-mpnet-base-v2``, or ``tiny:sentence`` offline), an
    ``open_clip`` text tower (``clip`` section), or the text tower of a ``train_video_text`` run
    (``video_text``, ``model`` its output)."""

    kind: Literal["sentence_transformers", "open_clip", "video_text"] = "sentence_transformers"
    model: str = Field("tiny:sentence", description="sentence-transformers model id/path, or a train_video_text output")
    clip: ClipModel = ClipModel()
    normalize: bool = Field(False, description="L2-normalise embeddings")
    dtype: Literal["float32", "float16"] = "float32"


def encoder_label(config: TextEncoderConfig) -> str:
    """The model a text encoder config names, as outputs record it (no model is loaded)."""
    if config.kind == "sentence_transformers":
        return config.model
    if config.kind == "video_text":
        return f"video_text:{config.model}"
    return f"{config.clip.name}:{config.clip.pretrained or 'random'}"


class TextEncoder:
    """Loads the model once; ``encode(texts)`` → float array [N, D]."""

    def __init__(self, config: TextEncoderConfig, device: str | None = None) -> None:
        import torch

        self.config = config
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if config.kind == "sentence_transformers":
            from sentence_transformers import SentenceTransformer

            from egoray.models.tiny import resolve_model

            self.model = SentenceTransformer(resolve_model(config.model), device=self.device)
        elif config.kind == "video_text":
            from egoray.models.video_text import load_video_text

            self.model = load_video_text(config.model).to(self.device)
        else:
            from egoray.models.clip import load_open_clip

            self.model, self.tokenizer, _ = load_open_clip(config.clip, self.device)
        self.name = encoder_label(config)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        if self.config.kind == "sentence_transformers":
            out = self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                    normalize_embeddings=self.config.normalize, show_progress_bar=False)
        elif self.config.kind == "video_text":
            out = self.model.embed_texts(list(texts), batch_size, self.config.normalize)
        else:
            chunks = []
            with torch.no_grad():
                for i in range(0, len(texts), batch_size):
                    tokens = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
                    chunks.append(self.model.encode_text(tokens, normalize=self.config.normalize).float().cpu().numpy())
            out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        return out.astype(self.config.dtype, copy=False)
