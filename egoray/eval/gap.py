"""The modality gap (Liang et al., 2022) of paired embeddings, and 2-D plots of it.

``a[i]`` and ``b[i]`` are a pair (a video and its caption). After L2 normalisation the gap vector
is the difference of the two modality centroids; its norm is the reported gap. The cone effect
shows as a high mean cosine similarity between embeddings of the same modality. Paired cosine
(a[i]·b[i]) against unpaired (a[i]·b[j], i≠j) says how much of the alignment survives the gap.
"""

from __future__ import annotations

import io

import numpy as np

from egoray.features.vectors import unit_rows


def _normalise(x: np.ndarray) -> np.ndarray:
    return unit_rows(np.asarray(x, dtype=np.float64))


def _mean_offdiagonal(sim: np.ndarray) -> float:
    n = sim.shape[0]
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1))) if n > 1 else float("nan")


def modality_gap(a: np.ndarray, b: np.ndarray) -> dict[str, object]:
    """Gap metrics of paired embeddings ``a`` [n, d] and ``b`` [n, d] (normalised here)."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"paired embeddings must be two [n, d] arrays of one shape; got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError("the modality gap needs at least 2 pairs")
    a, b = _normalise(a), _normalise(b)
    gap = a.mean(axis=0) - b.mean(axis=0)
    cross = a @ b.T
    return {
        "pairs": int(len(a)),
        "dim": int(a.shape[1]),
        "gap_norm": float(np.linalg.norm(gap)),
        "gap_vector": gap.round(6).tolist(),
        "cos_within_a": _mean_offdiagonal(a @ a.T),
        "cos_within_b": _mean_offdiagonal(b @ b.T),
        "cos_paired": float(np.trace(cross) / len(a)),
        "cos_unpaired": _mean_offdiagonal(cross),
    }


def project_2d(a: np.ndarray, b: np.ndarray, method: str = "svd", seed: int = 0) -> np.ndarray:
    """Both modalities in one 2-D space: ``[2n, 2]`` (a's rows first)."""
    x = np.concatenate([_normalise(a), _normalise(b)])
    if method == "svd":
        # no centring: the gap is an offset of the centroids, and centring would hide where it points
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return x @ vt[:2].T
    if method == "umap":
        import umap  # imported here: numba compiles on first use (seconds)

        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed, n_jobs=1)
        return reducer.fit_transform(x)
    raise ValueError(f"unknown projection {method!r}; use svd or umap")


def plot_gap(a: np.ndarray, b: np.ndarray, method: str = "svd",
             labels: tuple[str, str] = ("video", "text"), title: str = "") -> bytes:
    """PNG bytes: a scatter of both modalities with a line joining each pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = project_2d(a, b, method)
    n = len(a)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    ax.plot(np.stack([xy[:n, 0], xy[n:, 0]]), np.stack([xy[:n, 1], xy[n:, 1]]), color="0.75", lw=0.6, zorder=1)
    ax.scatter(xy[:n, 0], xy[:n, 1], s=14, label=labels[0], zorder=2)
    ax.scatter(xy[n:, 0], xy[n:, 1], s=14, label=labels[1], zorder=2)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title or f"modality gap ({method}, {n} pairs)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
