"""Multiple-choice QA accuracy for any scorer that ranks the answers.

``scores[i, j]`` is the scorer's preference for option j of question i (higher is better) and
``correct[i]`` the right option. A tie at the top earns 1 / (number tied): the expected accuracy
of breaking the tie at random, so a scorer that cannot tell options apart scores chance.
"""

from __future__ import annotations

import numpy as np


def mcq_accuracy(scores: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.int64)
    if scores.ndim != 2 or len(scores) != len(correct):
        raise ValueError(f"scores must be [questions, options] with one answer per question; got {scores.shape}")
    if len(correct) == 0:
        return {"accuracy": 0.0, "chance": 0.0, "questions": 0.0}
    best = scores.max(axis=1)
    right = scores[np.arange(len(correct)), correct]
    tied = (scores == best[:, None]).sum(axis=1)
    credit = np.where(right == best, 1.0 / tied, 0.0)
    return {"accuracy": float(credit.mean()), "chance": float(1.0 / scores.shape[1]),
            "questions": float(len(correct))}


def egomcq_accuracy(scores: np.ndarray, correct: np.ndarray, intra: np.ndarray) -> dict[str, float]:
    """EgoMCQ's two figures: accuracy over the inter-video questions (choices from different
    videos) and over the intra-video ones (choices from one video), each with its count."""
    intra = np.asarray(intra, dtype=bool)
    out: dict[str, float] = {"chance": float(1.0 / scores.shape[1]) if len(scores) else 0.0}
    for name, sel in (("inter_video", ~intra), ("intra_video", intra)):
        if sel.any():
            out[f"{name}_accuracy"] = mcq_accuracy(scores[sel], correct[sel])["accuracy"]
            out[f"{name}_questions"] = float(sel.sum())
    return out
