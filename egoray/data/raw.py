"""Column builder shared by the input readers: rows in, one Arrow table in the RAW schema out."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

from egoray.data.schema import RAW
from egoray.errors import EgorayError


class InputError(EgorayError, ValueError):
    """An input file that cannot be read at all (as opposed to bad records inside it)."""


def parse_json(data: bytes | str, name: str) -> Any:
    """A JSON document (Python's NaN and Infinity literals allowed), or one InputError naming the file."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: not valid JSON ({e})") from None


class RawRows:
    """Accumulates reader output column-wise (cheaper than a list of dicts for millions of rows)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {name: [] for name in RAW.names}

    def add(
        self,
        narration_id: str,
        video_uid: str | None,
        source: str,
        raw_text: Any,
        t_start: Any,
        t_end: Any,
        *,
        clip_uid: str | None = None,
        pass_: int | None = None,
        split: str | None = None,
        verb: str | None = None,
        noun: str | None = None,
        issue: str | None = None,
        issue_detail: str | None = None,
    ) -> None:
        start, start_issue = as_seconds(t_start, "start")
        end, end_issue = as_seconds(t_end, "end")
        if issue is None and (start_issue or end_issue):
            issue, issue_detail = "bad_timestamp", start_issue or end_issue
        if issue is None and raw_text is None:
            issue, issue_detail = "missing_field", "no narration text"
        if issue is None and not isinstance(raw_text, str):
            issue, issue_detail = "bad_text", f"narration text is a {type(raw_text).__name__}, not a string"
        c = self.cols
        c["narration_id"].append(narration_id)
        c["video_uid"].append(video_uid)
        c["clip_uid"].append(clip_uid)
        c["source"].append(source)
        c["pass"].append(pass_)
        c["raw_text"].append(raw_text if isinstance(raw_text, str) else None)
        c["t_start"].append(start)
        c["t_end"].append(end)
        c["split"].append(split)
        c["verb"].append(verb)
        c["noun"].append(noun)
        c["issue"].append(issue)
        c["issue_detail"].append(issue_detail)

    def __len__(self) -> int:
        return len(self.cols["narration_id"])

    def to_table(self) -> pa.Table:
        return pa.table({name: pa.array(self.cols[name], RAW.field(name).type) for name in RAW.names}, schema=RAW)


def as_seconds(value: Any, what: str) -> tuple[float | None, str | None]:
    """A timestamp as float seconds, or (None, why it is unusable). NaN/negative pass through to
    the validate stage as numbers so that its reason names them precisely."""
    if value is None:
        return None, f"no {what} timestamp"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"{what} timestamp {value!r} is not a number"
    value = float(value)
    if math.isinf(value):
        return None, f"{what} timestamp is infinite"
    return value, None
