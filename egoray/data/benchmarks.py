"""Readers of LaViLa's other benchmarks' annotation files, into tables the eval job pools.

- **EgoMCQ** (``egomcq.json``, EgoVLP): ``{question_id: {"query": {"clip_text", ...}, "choices":
  {"0": {"video_uid", "clip_start", "clip_end", "clip_text"}, ...}, "answer": k, "types": t}}``.
  A question is *intra-video* when all its choices come from one video (telling moments of one
  video apart), else *inter-video*; that is read from the choices themselves, not from ``types``.
- **EGTEA Gaze+**: ``action_idx.txt`` (``Action_name idx`` per line, ids from 1) and a split file
  (``test_split1.txt``: ``<clip_id> <action_idx> <verb_idx> <noun_idx>``); each clip is its own
  video file named by its id. Class names become lower-case words, as LaViLa reads them.
"""

from __future__ import annotations

import json
import numbers
from typing import Any

import pyarrow as pa

from egoray.data.raw import InputError

EGOMCQ = pa.schema([("id", pa.string()), ("question_id", pa.string()), ("choice", pa.int32()),
                    ("video_uid", pa.string()), ("t_start", pa.float64()), ("t_end", pa.float64()),
                    ("query", pa.string()), ("answer", pa.int32()), ("intra", pa.bool_())])
EGTEA_CLIPS = pa.schema([("clip_id", pa.string()), ("video_uid", pa.string()), ("t_start", pa.float64()),
                         ("t_end", pa.float64()), ("label", pa.string())])


def read_egomcq(data: bytes, name: str = "egomcq.json") -> pa.Table:
    """One row per (question, choice): ``id = <question_id>:<choice>``, the choice's clip, the
    query text, the right choice and whether the question is intra-video."""
    try:
        questions = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: not JSON ({e})") from None
    if not isinstance(questions, dict):
        raise InputError(f"{name}: expected an object question_id -> question (EgoMCQ's egomcq.json)")
    rows: dict[str, list[Any]] = {f.name: [] for f in EGOMCQ}
    for qid, q in questions.items():
        choices, query, answer = _question(q, qid, name)
        intra = len({c["video_uid"] for c in choices}) == 1
        for k, c in enumerate(choices):
            for field, value in (("id", f"{qid}:{k}"), ("question_id", str(qid)), ("choice", k),
                                 ("video_uid", c["video_uid"]), ("t_start", float(c["clip_start"])),
                                 ("t_end", float(c["clip_end"])), ("query", query), ("answer", answer),
                                 ("intra", intra)):
                rows[field].append(value)
    return pa.table(rows, schema=EGOMCQ)


def _question(q: Any, qid: str, name: str) -> tuple[list[dict[str, Any]], str, int]:
    """A question's choices in order, its query text and the right choice; a malformed one stops
    the evaluation with its id (a benchmark file is scored whole or not at all)."""
    where = f"{name}: question {qid!r}"
    if not isinstance(q, dict) or not isinstance(q.get("choices"), dict) or not isinstance(q.get("query"), dict):
        raise InputError(f"{where}: needs query and choices objects")
    choices = [q["choices"].get(str(k)) for k in range(len(q["choices"]))]
    for k, c in enumerate(choices):
        if not isinstance(c, dict) or not isinstance(c.get("video_uid"), str) or not all(
                isinstance(c.get(f), numbers.Real | str) for f in ("clip_start", "clip_end")):
            raise InputError(f"{where}: choice {k} needs video_uid, clip_start and clip_end")
    query = q["query"].get("clip_text")
    answer = q.get("answer")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: no query clip_text")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise InputError(f"{where}: answer {answer!r} is not one of its {len(choices)} choices")
    return choices, query, answer


def read_egtea_classes(data: bytes, name: str = "action_idx.txt") -> list[str]:
    """Class names in id order from EGTEA's ``action_idx.txt`` (``Take_bowl 1`` → ``take bowl``)."""
    by_id: dict[int, str] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        label, _, idx = line.rpartition(" ")
        if not label or not idx.isdigit():
            raise InputError(f"{name}: line {n} is not '<Action_name> <index>': {line!r}")
        by_id[int(idx)] = label.replace("_", " ").lower()
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise InputError(f"{name}: class indices are not 1..{len(by_id)}")
    return [by_id[i] for i in sorted(by_id)]


def read_egtea_split(data: bytes, classes: list[str], name: str = "test_split1.txt") -> pa.Table:
    """The clips of an EGTEA split file with their class name (each clip is its own video)."""
    rows: dict[str, list[Any]] = {f.name: [] for f in EGTEA_CLIPS}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
            raise InputError(f"{name}: line {n} is not '<clip_id> <action 1..{len(classes)}> ...': {line.strip()!r}")
        for field, value in (("clip_id", parts[0]), ("video_uid", parts[0]), ("t_start", 0.0), ("t_end", 0.0),
                             ("label", classes[int(parts[1]) - 1])):
            rows[field].append(value)
    return pa.table(rows, schema=EGTEA_CLIPS)
