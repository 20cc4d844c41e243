"""One line under each metric table of the report: what the numbers measure and the level they
must beat (chance, or a baseline computed from the same data). Each eval section writes its own
(``note`` in its module of :mod:`egoray.eval.sections`); the training table's is here."""

from __future__ import annotations

from typing import Any

from egoray.eval.sections import fmt as _f
from egoray.eval.sections import kind_of


def metric_note(section: str, metrics: dict[str, Any]) -> str:
    """The line for an eval section (``captioning-narrator`` uses the captioning note); a section
    without a note of its own lists whatever chance or baseline keys its metrics hold."""
    kind = kind_of(section)
    if kind is not None:
        return kind.note(metrics)
    levels = {k: v for k, v in metrics.items() if any(s in k for s in ("chance", "blind", "constant"))}
    return "; ".join(f"{k} = {_f(v)}" for k, v in levels.items()) or "no chance level recorded for this section."


def training_note(rows: list[dict[str, Any]]) -> str:
    """The line under the training table: what each column is and the chance R@1 where known."""
    chance = sorted({_f(r[k]) for r in rows for k in r if k.startswith("chance_R@1") and r.get(k) != ""})
    line = ("loss: training cross-entropy (lower is better), eval_loss: the same on held-out items; "
            "R@1: held-out retrieval as above")
    return line + (f"; chance R@1 = {', '.join(chance)}." if chance else ".")
