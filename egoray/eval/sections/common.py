"""What the eval sections share: their result, their rejects and encoders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from egoray import storage
from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.features.text import TextEncoderConfig


class QueryEncoder(StrictModel):
    """Where a section's texts (queries, class prompts) are embedded: by the encoder a
    text_features output was made with (the one a dual encoder trained on), or by ``encoder``."""

    text_features: Url | None = Field(None, description="embed with the encoder this text_features output was made with")
    encoder: TextEncoderConfig | None = None

    def check_one_encoder(self, what: str) -> None:
        if bool(self.text_features) == bool(self.encoder):
            raise ValueError(f"{what} needs exactly one of text_features (its encoder) or encoder")


@dataclass
class SectionResult:
    metrics: dict[str, Any]
    counts: dict[str, int]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)
    pairs: tuple[np.ndarray, np.ndarray] | None = None


def reject(record_id: str, stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    return {"record_id": str(record_id), "stage": stage, "reason": reason, "detail": detail, "input": ""}


def encode(model: Any, video: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
    import torch

    param = next(model.parameters())
    with torch.no_grad():
        if video is not None:
            return model.encode_video(torch.from_numpy(video).to(param)).float().numpy()
        return model.encode_text(torch.from_numpy(text).to(param)).float().numpy()


def matrix(column: Any) -> np.ndarray:
    from egoray.stages.text import embedding_matrix

    return embedding_matrix(column)


def dense(codes: np.ndarray) -> np.ndarray:
    """Label codes (stable hashes, -1 unknown) as 0..K-1 (unknown stays -1)."""
    out = np.full(len(codes), -1, dtype=np.int64)
    known = codes >= 0
    out[known] = np.unique(codes[known], return_inverse=True)[1].ravel()
    return out


def text_encoder_of(text_features: str | None, encoder: TextEncoderConfig | None = None) -> Any:
    """The encoder a text_features output was made with (from its run.json), or ``encoder``."""
    from egoray.features.text import TextEncoder

    if encoder is None:
        run_url = storage.join(text_features, "run.json")
        if not storage.exists(run_url):
            raise InputError(f"{text_features}: no run.json to take the text encoder from")
        encoder = TextEncoderConfig(**storage.read_json(run_url)["config"]["encoder"])
    return TextEncoder(encoder, device="cpu")


def embed_texts(texts: list[str], text_features: str | None, encoder: TextEncoderConfig | None = None) -> np.ndarray:
    return text_encoder_of(text_features, encoder).encode(texts).astype(np.float32)


def fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
