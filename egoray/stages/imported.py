"""Released per-video features (Ego4D's ``<video_uid>.pt``, ``[T, D]``) read into our layout.

Ego4D ships Omnivore (1536-d) and SlowFast (2304-d) features: one tensor per video, a feature
every 16 frames of 30 fps video (1.875 per second), feature ``k`` covering
``[k / 1.875, (k + 1) / 1.875)`` s. Files are read with ``torch.load(weights_only=True)``: a file
that would run code is rejected, not loaded.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.stages.base import Resources, Stage
from egoray.stages.video import to_npy


def load_feature_file(path: str) -> np.ndarray:
    """A ``.pt`` file's ``[T, D]`` features as float32 (a tensor, or a dict holding exactly one)."""
    import torch

    from egoray.models.checkpoint import load_weights

    value = load_weights(path, path)
    if isinstance(value, dict):
        tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise ValueError(f"a dict of {len(tensors)} tensors, not one feature matrix")
        value = tensors[0]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"holds a {type(value).__name__}, not a tensor")
    if value.ndim != 2 or value.shape[0] == 0:
        raise ValueError(f"a tensor of shape {tuple(value.shape)}, not [T > 0, D]")
    return value.detach().float().cpu().numpy()


class LoadFeatureFiles(Stage):
    """``key, video_uid, path`` rows → ``features`` (``.npy`` of [T, D]) and the covered span;
    unreadable or malformed files are rejected with the reason."""

    name = "load"

    def __init__(self, fps: float, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.fps = fps

    def process(self, rows: pa.Table) -> pa.Table:
        feats: list[bytes | None] = []
        ends: list[float | None] = []
        reasons: list[str] = []
        details: list[str] = []
        for path in rows["path"].to_pylist():
            matrix, reason, detail = _load(path)
            feats.append(to_npy(matrix) if matrix is not None else None)
            ends.append(len(matrix) / self.fps if matrix is not None else None)
            reasons.append(reason)
            details.append(detail)
        rows = rows.drop_columns([c for c in ("t_start", "t_end") if c in rows.column_names])
        rows = rows.append_column("features", pa.array(feats, pa.binary()))
        rows = rows.append_column("t_start", pa.array([0.0 if f is not None else None for f in feats], pa.float64()))
        rows = rows.append_column("t_end", pa.array(ends, pa.float64()))
        bad = np.array([bool(r) for r in reasons])
        return self.reject(rows, bad, reasons, details) if bad.any() else rows


def _load(path: str) -> tuple[np.ndarray | None, str, str]:
    """(features, "", "") or (None, reason, detail)."""
    from egoray.data.raw import InputError

    try:
        with storage.local_copy(path) as local:
            return load_feature_file(local).astype(np.float32), "", ""
    except InputError as e:  # the pickle names more than tensors: not loaded
        return None, "unsafe_file", str(e)[:300]
    except (ValueError, RuntimeError, EOFError, storage.StorageError) as e:
        return None, "unreadable", str(e)[:300]
