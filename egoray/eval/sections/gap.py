"""The gap section: the modality gap of paired embeddings, with 2-D plots."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from egoray import storage
from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.eval.sections.common import SectionResult, matrix


class GapSection(StrictModel):
    """Modality gap of paired embeddings, with 2-D plots."""

    sources: list[Literal["dual_encoder", "captions"]] = ["dual_encoder"]
    captions: Url | None = Field(None, description="a captions output (CoCa image mean vs summary embedding)")
    plots: list[Literal["svd", "umap"]] = ["svd", "umap"]


def uses_pairs(cfg: GapSection) -> bool:
    """The dual encoder's held-out pairs come from the retrieval section's result."""
    return "dual_encoder" in cfg.sources


def compute(cfg: GapSection, dual_pairs: tuple[np.ndarray, np.ndarray] | None) -> SectionResult:
    """Gap metrics and plots of each configured source of pairs."""
    from egoray.eval.gap import modality_gap, plot_gap

    metrics: dict[str, Any] = {}
    plots: dict[str, bytes] = {}
    sources: dict[str, tuple[np.ndarray, np.ndarray, tuple[str, str]]] = {}
    if "dual_encoder" in cfg.sources:
        if dual_pairs is None:
            raise InputError("gap source dual_encoder needs the retrieval section")
        sources["dual_encoder"] = (*dual_pairs, ("video", "narration"))
    if "captions" in cfg.sources:
        if not cfg.captions:
            raise InputError("gap source captions needs gap.captions (a captions output)")
        t = storage.read_parquet(storage.join(cfg.captions, "captions"), columns=["image_embedding", "summary_embedding"])
        sources["captions"] = (matrix(t["image_embedding"]), matrix(t["summary_embedding"]),
                               ("frames (mean)", "summary"))
    n = 0
    for name, (a, b, labels) in sources.items():
        if a.shape != b.shape:
            raise InputError(f"gap source {name}: the two modalities have shapes {a.shape} and {b.shape}")
        metrics[name] = modality_gap(a, b)
        n += len(a)
        for method in cfg.plots:
            if len(a) < 4 and method == "umap":
                continue
            plots[f"gap_{name}_{method}.png"] = plot_gap(a, b, method, labels, f"{name}: {method} ({len(a)} pairs)")
    return SectionResult(metrics, {"in": n, "out": n, "rejected": 0}, plots=plots)


def note(m: dict[str, Any]) -> str:
    return ("gap_norm: the distance between the centroids of the L2-normalised video (or image) and text "
            "embeddings of paired items (0: the two modalities share one region); cos_paired against cos_unpaired: "
            "true pairs against all other pairs (equal: pairing is not encoded); the plots below project both to 2-D.")
