"""The report's pictures, as PNG bytes: training curves, the job timeline, frame strips.

Matplotlib (Agg) renders them, as it does the modality-gap plots, so every picture in the page
is a PNG a browser or any image library decodes.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import numpy as np

# columns of a training metrics table that are bookkeeping, not curves
NOT_CURVES = {"epoch", "step", "examples", "examples_per_s", "lr", "seconds"}
LOSSES = ("loss", "eval_loss")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def held_out_keys(rows: list[dict[str, Any]], limit: int = 3) -> list[str]:
    """The held-out metrics worth a curve: numeric columns other than losses, bookkeeping (memory,
    throughput), model scalars (gates, temperatures) and chance levels, in the table's order."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [k for k in keys if any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                      for r in rows)]
    skip = ("chance", "gate", "temperature", "logit_scale", "rss", "_mb", "per_s", "median_rank")
    return [k for k in numeric if k not in NOT_CURVES and k not in LOSSES
            and not any(s in k for s in skip)][:limit]


def training_curves(name: str, rows: list[dict[str, Any]]) -> bytes:
    """Loss (training mean per evaluation, held-out) and the held-out metrics against the
    optimiser step, one row per evaluation; chance levels dashed where the table has them."""
    plt = _pyplot()
    x_key = "step" if any(r.get("step") is not None for r in rows) else "epoch"
    metrics = held_out_keys(rows)
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(3.4 * (1 + len(metrics)), 2.9), dpi=100, squeeze=False)
    loss_ax = axes[0][0]

    def series(key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(r.get(x_key) or 0, r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    for key, style in zip(LOSSES, ("-o", "-s"), strict=True):
        xs, ys = series(key)
        if len(xs):
            loss_ax.plot(xs, ys, style, ms=3, label={"loss": "training loss", "eval_loss": "held-out loss"}[key])
    loss_ax.set_xlabel(x_key)
    loss_ax.set_title(f"{name}: loss")
    if loss_ax.lines:
        loss_ax.legend(fontsize=8)
    for ax, key in zip(axes[0][1:], metrics, strict=True):  # one panel each: their scales differ
        xs, ys = series(key)
        ax.plot(xs, ys, "-o", ms=3, color="C2", label="held-out")
        chance = f"chance_{key.split('_', 1)[-1]}" if "_" in key else f"chance_{key}"
        cx, cy = series(chance)
        if len(cx):
            ax.plot(cx, cy, "--", color="0.5", lw=1, label="chance")
            ax.legend(fontsize=8)
        ax.set_xlabel(x_key)
        ax.set_title(key)
    return _png(fig)


def headline(items: list[tuple[str, float, float, str]]) -> bytes:
    """One small panel per (title, value, baseline, baseline name): the model's bar beside its
    chance or baseline bar, both labelled with their values."""
    plt = _pyplot()
    cols = min(len(items), 4)
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, (title, value, base, base_name) in zip(axes.flat, items, strict=False):
        bars = ax.bar([0, 1], [value, base], color=["#2f7d4f" if value > base else "#b42318", "0.7"], width=0.6)
        for bar, v in zip(bars, (value, base), strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v:.3g}", ha="center", va="bottom",
                    fontsize=8)
        ax.set_xticks([0, 1], ["model", base_name], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, max(value, base, 1e-9) * 1.25)
        ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def _time(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def timeline(jobs: list[dict[str, Any]]) -> bytes | None:
    """One bar per job from its start to its end (its latest run), and under it a thin bar per
    stage as long as the stage's busy seconds summed over its workers (stages of a job stream
    concurrently, so these overlap and may be longer than the job). None without timed jobs."""
    timed = []
    for j in jobs:
        start, end = _time(j.get("started_at")), _time(j.get("finished_at"))
        if start is not None and end is not None:
            timed.append((start, end, j))
    if not timed:
        return None
    timed.sort(key=lambda t: t[0])
    t0 = timed[0][0]
    plt = _pyplot()
    rows: list[tuple[str, float, float, bool]] = []
    for start, end, j in timed:
        rows.append((f"{j['name']} ({j.get('job', '?')})", start - t0, max(end - start, 0.5), True))
        for stage, counts in (j.get("stages") or {}).items():
            seconds = counts.get("seconds") if isinstance(counts, dict) else None
            if isinstance(seconds, (int, float)) and seconds >= 0.5:
                rows.append((f"  {stage}", start - t0, float(seconds), False))
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.22 * len(rows)), dpi=100)
    for i, (_, left, width, is_job) in enumerate(rows):
        ax.barh(i, width, left=left, height=0.7 if is_job else 0.35,
                color="#4878a8" if is_job else "#9dbbd6")
        ax.text(left + width, i, f" {width:.0f}s", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first job started (thin bars: a stage's busy worker-seconds)")
    ax.set_title("jobs and their stages")
    return _png(fig)


def frame_strip(frames: list[np.ndarray]) -> bytes:
    """Frames side by side with a 2-pixel white gap, as a PNG at their own resolution."""
    from matplotlib.image import imsave

    h = max(f.shape[0] for f in frames)
    gap = np.full((h, 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for f in frames:
        if parts:
            parts.append(gap)
        parts.append(np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0)), constant_values=255))
    buf = io.BytesIO()
    imsave(buf, np.concatenate(parts, axis=1), format="png")
    return buf.getvalue()
