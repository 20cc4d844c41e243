"""Reader for Ego4D ``em_train_narrations.pkl`` with the restricted unpickler.

The file goes through :mod:`egoray.data.safe_pickle`, which constructs nothing foreign: a
record holding a foreign class is rejected with reason ``unknown_pickle_class``.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from egoray.data.raw import InputError, RawRows
from egoray.data.safe_pickle import ForeignObject, safe_load


def foreign_in(value: Any, depth: int = 0) -> str | None:
    """Name of the first foreign class inside ``value``, if any."""
    if isinstance(value, ForeignObject) or (isinstance(value, type) and issubclass(value, ForeignObject)):
        return value.qualname
    if depth > 20:
        return None
    if isinstance(value, dict):
        items = list(value.keys()) + list(value.values())
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return None
    for item in items:
        found = foreign_in(item, depth + 1)
        if found:
            return found
    return None


def read_em_pickle(data: bytes, name: str = "em_train_narrations.pkl", clips: Any = None) -> pa.Table:
    """RAW rows for every narration of every clip; ids ``<clip_uid>:<pass>:<index>``.

    The pickle holds clips only, so ``video_uid`` is the clip uid as well. ``clips``: the
    already unpickled content, if the caller has it.
    """
    clips = safe_load(data, name) if clips is None else clips
    if not isinstance(clips, list):
        raise InputError(f"{name}: expected a list of clips, found {type(clips).__name__}")
    rows = RawRows()
    for ci, clip in enumerate(clips):
        if not isinstance(clip, dict):
            foreign = foreign_in(clip)
            reason = "unknown_pickle_class" if foreign else "missing_field"
            detail = f"clip is {foreign}" if foreign else f"clip is a {type(clip).__name__}, not a dict"
            rows.add(f"clip#{ci}", None, "em_pkl", None, None, None, issue=reason, issue_detail=detail)
            continue
        clip_uid = clip.get("clip_uid")
        clip_uid = clip_uid if isinstance(clip_uid, str) and clip_uid else None
        pass_no = _pass_number(clip.get("narration_pass"))
        base = f"{clip_uid or f'clip#{ci}'}:{pass_no if pass_no is not None else '?'}"
        narrations = clip.get("narrations")
        if clip_uid is None or not isinstance(narrations, list):
            missing = "clip_uid" if clip_uid is None else "narrations"
            foreign = foreign_in(clip)
            rows.add(
                base, clip_uid, "em_pkl", None, None, None, clip_uid=clip_uid, pass_=pass_no,
                issue="unknown_pickle_class" if foreign else "missing_field",
                issue_detail=f"holds {foreign}" if foreign else f"clip has no usable {missing!r}",
            )
            continue
        for i, n in enumerate(narrations):
            nid = f"{base}:{i}"
            foreign = foreign_in(n)
            if foreign:
                rows.add(nid, clip_uid, "em_pkl", None, None, None, clip_uid=clip_uid, pass_=pass_no,
                         issue="unknown_pickle_class", issue_detail=f"holds {foreign}")
                continue
            if not isinstance(n, dict):
                rows.add(nid, clip_uid, "em_pkl", None, None, None, clip_uid=clip_uid, pass_=pass_no,
                         issue="missing_field", issue_detail=f"narration is a {type(n).__name__}")
                continue
            stamps = n.get("timestamps")
            if not isinstance(stamps, list | tuple) or len(stamps) != 2:
                rows.add(nid, clip_uid, "em_pkl", n.get("narration_text"), None, None, clip_uid=clip_uid,
                         pass_=pass_no, issue="missing_field", issue_detail="timestamps is not [start, end]")
                continue
            rows.add(nid, clip_uid, "em_pkl", n.get("narration_text"), stamps[0], stamps[1],
                     clip_uid=clip_uid, pass_=pass_no)
    return rows.to_table()


def _pass_number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.search(r"(\d+)$", value)
        return int(m.group(1)) if m else None
    return None
