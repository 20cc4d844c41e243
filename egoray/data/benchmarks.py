"""Readers of LaViLa's other benchmarks' annotation files, into tables the eval job pools.

- **EgoMCQ** (``egomcq.json``, EgoVLP): ``{question_id: {"query": {"clip_text", ...}, "choices":
  {"0": {"video_uid", "clip_start", "clip_end", "clip_text"}, ...}, "answer": k, "types": t}}``.
  A question is *intra-video* when all its choices come from one video (telling moments of one
  video apart), else *inter-video*; that is read from the choices themselves, not from ``types``.
- **Kinetics-400** ``val.csv`` (``label, youtube_id, time_start, time_end, split``): each clip is
  the file the official downloader writes, ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4``
  (already cut to the interval), so a clip's id is that file stem and the whole file is the clip.
- **Charades-Ego** ``CharadesEgo_v1_test.csv`` (``id, ..., actions, length``; ``actions`` is
  ``c092 11.90 21.20;c147 0.00 12.60``): one untrimmed video per row, labelled with every class it
  holds (mAP over classes, as LaViLa evaluates); ids ending in ``EGO`` are the first-person
  videos, the others their third-person pairs.
- **EGTEA Gaze+**: ``action_idx.txt`` (``Action_name idx`` per line, ids from 1) and a split file
  (``test_split1.txt``: ``<clip_id> <action_idx> <verb_idx> <noun_idx>``); each clip is its own
  video file named by its id. Class names become lower-case words, as LaViLa reads them.
"""

from __future__ import annotations

import numbers
from typing import Any

import pyarrow as pa

from egoray.data.raw import InputError, parse_json

EGOMCQ = pa.schema([("id", pa.string()), ("question_id", pa.string()), ("choice", pa.int32()),
                    ("video_uid", pa.string()), ("t_start", pa.float64()), ("t_end", pa.float64()),
                    ("query", pa.string()), ("answer", pa.int32()), ("intra", pa.bool_())])
CLIPS = pa.schema([("clip_id", pa.string()), ("video_uid", pa.string()), ("t_start", pa.float64()),
                   ("t_end", pa.float64()), ("label", pa.string())])
MULTI_LABEL_CLIPS = pa.schema([("clip_id", pa.string()), ("video_uid", pa.string()), ("t_start", pa.float64()),
                               ("t_end", pa.float64()), ("label", pa.list_(pa.string()))])
EGTEA_CLIPS = pa.schema([("clip_id", pa.string()), ("video_uid", pa.string()), ("t_start", pa.float64()),
                         ("t_end", pa.float64()), ("label", pa.string())])


def read_egomcq(data: bytes, name: str = "egomcq.json") -> pa.Table:
    """One row per (question, choice): ``id = <question_id>:<choice>``, the choice's clip, the
    query text, the right choice and whether the question is intra-video."""
    questions = parse_json(data, name)
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


def _csv_rows(data: bytes, name: str, needed: tuple[str, ...]) -> list[dict[str, str]]:
    import csv
    import io

    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{name}: not a readable CSV ({e})") from None
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{name}: missing column(s) {missing}; found {reader.fieldnames}")
    return rows


def read_kinetics_csv(data: bytes, name: str = "val.csv") -> pa.Table:
    """Kinetics clips keyed by the downloader's file stem, labelled with their class name."""
    out: dict[str, list[Any]] = {f.name: [] for f in CLIPS}
    for n, r in enumerate(_csv_rows(data, name, ("label", "youtube_id", "time_start", "time_end")), 2):
        try:
            start, end = int(float(r["time_start"])), int(float(r["time_end"]))
        except ValueError:
            raise InputError(f"{name}: line {n}: time_start/time_end {r['time_start']!r}, {r['time_end']!r} "
                             "are not numbers") from None
        stem = f"{r['youtube_id']}_{start:06d}_{end:06d}"
        for field, value in (("clip_id", stem), ("video_uid", stem), ("t_start", None), ("t_end", None),
                             ("label", r["label"].strip())):
            out[field].append(value)
    return pa.table(out, schema=CLIPS)


def read_charades_ego_csv(data: bytes, class_names: dict[str, str], subset: str = "ego",
                          name: str = "CharadesEgo_v1_test.csv") -> pa.Table:
    """Charades-Ego videos with the names of every class they hold (``subset``: ``ego`` — ids
    ending in EGO —, ``third_person`` or ``all``); a video without actions is kept, negative for
    every class."""
    out: dict[str, list[Any]] = {f.name: [] for f in MULTI_LABEL_CLIPS}
    for n, r in enumerate(_csv_rows(data, name, ("id", "actions")), 2):
        vid = r["id"].strip()
        ego = vid.upper().endswith("EGO")
        if (subset == "ego" and not ego) or (subset == "third_person" and ego):
            continue
        labels = []
        for action in filter(None, (a.strip() for a in (r["actions"] or "").split(";"))):
            code = action.split()[0]
            if code not in class_names:
                raise InputError(f"{name}: line {n}: class {code!r} is not in the class list")
            labels.append(class_names[code])
        for field, value in (("clip_id", vid), ("video_uid", vid), ("t_start", None), ("t_end", None),
                             ("label", sorted(set(labels)))):
            out[field].append(value)
    return pa.table(out, schema=MULTI_LABEL_CLIPS)
