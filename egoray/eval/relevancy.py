"""Relevancy matrices for multi-instance retrieval (EK-100 MIR).

EK-100 scores a (video segment, sentence) pair as half "same verb class" plus half the IoU of
their noun-class sets (the JPoSE recipe). The sentences are the benchmark's unique narrations;
each takes the classes of the narration it was drawn from.
"""

from __future__ import annotations

import ast
import io
from dataclasses import dataclass

import numpy as np
import pyarrow.csv as pacsv

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.safe_pickle import safe_load


@dataclass
class Relevancy:
    """``matrix[i, j]``: relevancy of video ``video_ids[i]`` to sentence ``sentence_ids[j]``."""

    matrix: np.ndarray
    video_ids: list[str]
    sentence_ids: list[str]
    sentences: list[str]


def label_relevancy(verb_a: np.ndarray, nouns_a: np.ndarray, verb_b: np.ndarray, nouns_b: np.ndarray) -> np.ndarray:
    """0.5 * (verb equal) + 0.5 * IoU(noun sets); nouns are multi-hot ``[n, num_nouns]`` bool arrays."""
    a, b = nouns_a.astype(np.float32), nouns_b.astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return (0.5 * (verb_a[:, None] == verb_b[None, :]) + 0.5 * iou).astype(np.float32)


def _read_csv(url: str, columns: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        table = pacsv.read_csv(io.BytesIO(storage.read_bytes(url)),
                               convert_options=pacsv.ConvertOptions(column_types={c: "string" for c in columns}))
    except (FileNotFoundError, storage.StorageError) as e:
        raise InputError(f"{url}: {e}") from None
    except Exception as e:  # pyarrow raises ArrowInvalid for malformed CSVs
        raise InputError(f"{url}: not a readable CSV ({e})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{url}: missing column(s) {missing}; found {table.column_names}")
    return {c: table[c].to_pylist() for c in columns}


def _noun_sets(values: list[str], url: str) -> list[list[int]]:
    out = []
    for i, v in enumerate(values):
        try:
            nouns = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            raise InputError(f"{url}: row {i + 2}: all_noun_classes {v!r} is not a list of class ids") from None
        out.append([int(n) for n in (nouns if isinstance(nouns, (list, tuple)) else [nouns])])
    return out


def ek100_relevancy(videos_csv: str, sentences_csv: str | None = None, matrix_url: str | None = None) -> Relevancy:
    """EK-100 MIR relevancy from the annotation CSVs, or the official matrix with their ids.

    ``videos_csv``: an EK-100 action CSV (``narration_id``, ``verb_class``, ``all_noun_classes``,
    ``narration``), one row per video segment. ``sentences_csv``: the benchmark's sentence list
    (``narration_id``, ``narration``) whose ids point into ``videos_csv``; without it every distinct
    narration of ``videos_csv`` is a sentence, in order of first appearance. ``matrix_url``: the
    official relevancy (``caption_relevancy_EPIC_100_retrieval_test.pkl``, or ``.npy``/``.npz``),
    rows in ``videos_csv`` order and columns in ``sentences_csv`` order, used instead of the
    one computed from the classes.
    """
    cols = ("narration_id", "narration", "verb_class", "all_noun_classes")
    v = _read_csv(videos_csv, cols)
    verbs = np.array([int(x) for x in v["verb_class"]], dtype=np.int64)
    sets = _noun_sets(v["all_noun_classes"], videos_csv)
    width = 1 + max((max(s) for s in sets if s), default=0)
    nouns = np.zeros((len(sets), width), dtype=bool)
    for i, s in enumerate(sets):
        nouns[i, s] = True
    row_of = {nid: i for i, nid in enumerate(v["narration_id"])}
    if sentences_csv is None:
        first: dict[str, int] = {}
        for i, text in enumerate(v["narration"]):
            first.setdefault(text, i)
        rows = list(first.values())
        sentence_ids = [v["narration_id"][i] for i in rows]
        sentences = list(first)
    else:
        s = _read_csv(sentences_csv, ("narration_id", "narration"))
        unknown = [nid for nid in s["narration_id"] if nid not in row_of]
        if unknown:
            raise InputError(f"{sentences_csv}: {len(unknown)} sentence ids are not in {videos_csv} "
                             f"(first: {unknown[0]!r}); both files must come from the same split")
        rows = [row_of[nid] for nid in s["narration_id"]]
        sentence_ids, sentences = s["narration_id"], s["narration"]
    idx = np.asarray(rows, dtype=np.int64)
    if matrix_url is None:
        matrix = label_relevancy(verbs, nouns, verbs[idx], nouns[idx])
    else:
        if sentences_csv is None:
            raise InputError(f"{matrix_url}: an official relevancy matrix needs sentences_csv (its columns' ids)")
        matrix = load_relevancy(matrix_url)
        if matrix.shape != (len(v["narration_id"]), len(rows)):
            raise InputError(f"{matrix_url}: a {matrix.shape[0]}×{matrix.shape[1]} matrix, but {videos_csv} has "
                             f"{len(v['narration_id'])} segments and {sentences_csv} {len(rows)} sentences")
    return Relevancy(matrix, list(v["narration_id"]), list(sentence_ids), list(sentences))


def load_relevancy(url: str) -> np.ndarray:
    """A relevancy matrix from ``.npy``/``.npz`` or a pickle (EK-100 ships
    ``caption_relevancy_EPIC_100_retrieval_test.pkl``), read by the restricted unpickler: a
    pickle that would run code is refused."""
    data = storage.read_bytes(url)
    try:
        if url.endswith(".npz"):
            archive = np.load(io.BytesIO(data), allow_pickle=False)
            matrix = archive[archive.files[0]]
        elif url.endswith(".npy"):
            matrix = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            matrix = np.asarray(safe_load(data, url, numpy_arrays=True), dtype=np.float32)
    except Exception as e:
        raise InputError(f"{url}: cannot read a relevancy matrix ({type(e).__name__}: {e})") from None
    if matrix.ndim != 2:
        raise InputError(f"{url}: a relevancy matrix must be 2-D; got shape {matrix.shape}")
    return matrix.astype(np.float32)
