"""Trained models on disk: the exported ``model.pt`` blobs, loaded without running any code.

A training job exports ``{"kind", "config", "state_dict", ...}`` with ``torch.save``. Loading uses
``torch.load(weights_only=True)``: tensors, numbers, strings and containers only; a file whose
pickle names anything else (a crafted ``model.pt``) is refused before it can run.
"""

from __future__ import annotations

import io
from typing import Any

from egoray import storage
from egoray.data.raw import InputError

MODEL_FILE = "model.pt"


def load_weights(data: bytes | str, name: str = "model.pt", map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of bytes or a local path; a refused file is an InputError."""
    import pickle

    import torch

    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{name}: refused to load (it holds more than weights: {first[:300]})") from None


def exported_path(url: str) -> str:
    """The ``model.pt`` of a training job's output, of its model folder, or ``url`` itself."""
    candidates = [storage.join(url, "model", MODEL_FILE), storage.join(url, MODEL_FILE), url]
    for candidate in candidates:
        if candidate.endswith(".pt") and storage.exists(candidate):
            return candidate
    raise InputError(f"no trained model under {url} (looked for {candidates[0]})")


def load_exported(url: str) -> dict[str, Any]:
    """The exported blob (kind, config, state_dict, ...) of a training job's output or model folder."""
    path = exported_path(url)
    blob = load_weights(storage.read_bytes(path), path)
    if not isinstance(blob, dict):
        raise InputError(f"{path}: not an egoray model export")
    return blob


def load_exported_kind(url: str, kind: str, what: str) -> dict[str, Any]:
    """:func:`load_exported`, refusing an export of another kind of model (``what`` names ``kind``)."""
    blob = load_exported(url)
    if blob.get("kind") != kind:
        raise InputError(f"{url}: holds a {blob.get('kind')!r} model, not {what}")
    return blob
