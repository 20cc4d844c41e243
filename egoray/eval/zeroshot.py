"""Zero-shot classification: class names → prompt templates → text embeddings → scores.

A class's embedding is the mean of its L2-normalised template embeddings, normalised again
(CLIP's prompt ensembling). Single-label sets (Kinetics-400) report top-k accuracy; multi-label
sets (Charades-Ego) report mAP over classes, each class an average-precision ranking of the clips.
"""

from __future__ import annotations

import numpy as np

from egoray import storage
from egoray.data.raw import InputError, parse_json
from egoray.features.vectors import unit_rows

DEFAULT_TEMPLATES = ("The person in this video is doing {label}", "Camera wearer is {label}", "{label}")


def read_class_names(url: str) -> list[str]:
    """Class names from a JSON object ``name -> id`` (Kinetics), a JSON list, or text lines
    (``cNNN Label`` as in Charades, or one label per line), in class-id order."""
    text = storage.read_bytes(url).decode("utf-8")
    if url.endswith(".json"):
        data = parse_json(text, url)
        if isinstance(data, dict):
            names = [name.strip('"') for name, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
        elif isinstance(data, list):
            names = [str(x) for x in data]
        else:
            raise InputError(f"{url}: expected a JSON object name -> id or a list of names")
    else:
        names = []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            head, _, rest = line.partition(" ")
            is_code = len(head) > 1 and head[0] == "c" and head[1:].isdigit() and rest
            names.append(rest.strip() if is_code else line)
    if not names:
        raise InputError(f"{url}: no class names")
    return names


def expand_templates(names: list[str], templates: tuple[str, ...] | list[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Every (class, template) prompt, class-major: ``prompts[c * len(templates) + t]``."""
    for t in templates:
        if "{label}" not in t:
            raise ValueError(f"template {t!r} has no {{label}} placeholder")
    return [t.format(label=name) for name in names for t in templates]


def class_embeddings(prompt_embeddings: np.ndarray, num_classes: int) -> np.ndarray:
    """``[classes * templates, d]`` class-major prompt embeddings → ``[classes, d]`` ensembles."""
    if len(prompt_embeddings) % num_classes:
        raise ValueError(f"{len(prompt_embeddings)} prompt embeddings do not split into {num_classes} classes")
    per_class = unit_rows(prompt_embeddings).reshape(num_classes, -1, prompt_embeddings.shape[-1])
    return unit_rows(per_class.mean(axis=1))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of clips whose true class is among the k best scores. Ties count against the
    clip: a wrong class scoring the same as the true one ranks above it."""
    scores = np.asarray(scores, dtype=np.float64)
    true = scores[np.arange(len(labels)), labels]
    rank = (scores >= true[:, None]).sum(axis=1) - 1
    return {f"top{k}": float((rank < k).mean()) if len(labels) else 0.0 for k in ks}


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """EGTEA's figure: the top-1 accuracy of each class's clips, averaged over the classes that
    have clips (rare classes weigh as much as common ones). Ties count against the clip."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 0.0
    true = scores[np.arange(len(labels)), labels]
    right = (scores >= true[:, None]).sum(axis=1) == 1
    return float(np.mean([right[labels == c].mean() for c in np.unique(labels)]))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one ranking (positives ranked by ``scores``; ties broken against the positives)."""
    order = np.lexsort((positive.astype(np.int8), -scores))
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def multilabel_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Charades-style mAP: per class, AP of ranking the clips; mean over classes with a positive."""
    aps = np.array([average_precision(scores[:, c], targets[:, c].astype(bool)) for c in range(scores.shape[1])])
    present = ~np.isnan(aps)
    if not present.any():
        raise ValueError("no class has a positive clip")
    return float(aps[present].mean())
