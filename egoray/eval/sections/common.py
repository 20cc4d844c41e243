"""What the eval sections share: their result, their rejects, pooled inputs and encoders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
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


@dataclass(frozen=True)
class Pooled:
    """What a section's pooled table is made of. The eval job builds it with Ray Data, per video
    (:func:`egoray.train.pairs.build_pairs`: each item's window pooled from ``video_features``),
    into ``_work/<section>``, and hands its URL to ``compute``.

    The items come from one of: ``table`` (a Parquet file or folder), ``benchmark`` (a function a
    worker calls to read a benchmark's own file into a table), ``text_features`` (the rows of a
    text_features output in some splits, with their embeddings)."""

    video_features: str
    source: str  # what an input error names
    table: str | None = None
    benchmark: Callable[[], pa.Table] | None = None
    text_features: tuple[str, list[str]] | None = None
    require: tuple[str, ...] = ()  # columns the table must have (read with ``optional``; none: all)
    optional: tuple[str, ...] = ()  # read as well where the table has them
    per_batch: Callable[[pa.Table], pa.Table] | None = None  # picklable, applied to every batch
    videos: list[str] | None = None  # only these videos' items
    offset: float = 0.0  # each window widened by this many seconds
    labels: str | None = None  # verb and noun of items without them


def read_input(url: str) -> bytes:
    """An input file's bytes; a missing or unreadable one is an input error naming it."""
    try:
        return storage.read_bytes(url)
    except storage.StorageError as e:
        raise InputError(f"cannot read {url}: {e}") from None


def no_items(table: pa.Table, source: str, what: str) -> pa.Table:
    if table.num_rows == 0:
        raise InputError(f"{source}: no {what} items")
    return table


def reject(record_id: str, stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    return {"record_id": str(record_id), "stage": stage, "reason": reason, "detail": detail, "input": ""}


def encode(model: Any, video: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
    import torch

    param = next(model.parameters())
    with torch.no_grad():
        if video is not None:
            return model.encode_video(torch.from_numpy(video).to(param)).float().numpy()
        return model.encode_text(torch.from_numpy(text).to(param)).float().numpy()


def read_pooled(url: str, columns: list[str]) -> tuple[pa.Table, list[dict[str, Any]], int]:
    """The usable rows of a pooled table (built per video by the eval job), the rejects, all rows."""
    from egoray.stages.base import DETAIL, REASON, STAGE, pending

    files = storage.listdir(url, ".parquet")
    if not files:
        return pa.table({c: [] for c in columns}), [], 0
    table = storage.read_parquet(url)
    ok = pending(table)
    bad = table.filter(pa.array(~ok))
    rejects = [reject(r["id"], r[STAGE] or "pairs", r[REASON], r[DETAIL] or "")
               for r in bad.select(["id", STAGE, REASON, DETAIL]).to_pylist()]
    return table.filter(pa.array(ok)).select([c for c in columns if c in table.column_names]), rejects, table.num_rows


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
