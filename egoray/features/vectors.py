"""Embeddings scaled to unit length, the one way every metric and feature here does it."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each vector (last axis) divided by its L2 norm, so that a dot product is the cosine; a
    zero vector stays zero (the norm is floored at 1e-12) instead of becoming NaN."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
