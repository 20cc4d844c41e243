"""Reader for Ego4D ``narration.json``.

Decoded with msgspec straight into small typed structs (only the fields we use), which is several
times faster and lighter than ``json.load`` building a dict per narration. Files that msgspec
cannot read (Python's ``NaN`` literals) fall back to the standard library parser.
"""

from __future__ import annotations

import json

import msgspec
import pyarrow as pa

from egoray.data.raw import InputError, RawRows, as_seconds
from egoray.data.schema import SUMMARIES

PASSES = {"narration_pass_1": 1, "narration_pass_2": 2}


class _Narration(msgspec.Struct):
    timestamp_sec: float | str | None = None
    timestamp_frame: float | str | None = None
    narration_text: str | float | None = None
    annotation_uid: str | None = None


class _Summary(msgspec.Struct):
    start_sec: float | str | None = None
    end_sec: float | str | None = None
    summary_text: str | float | None = None
    annotation_uid: str | None = None


class _Pass(msgspec.Struct):
    narrations: list[_Narration] = []
    summaries: list[_Summary] = []


class _Video(msgspec.Struct):
    narration_pass_1: _Pass | None = None
    narration_pass_2: _Pass | None = None


_FILE = dict[str, _Video]


def decode(data: bytes, name: str = "narration.json") -> dict[str, _Video]:
    """Parse the file's bytes; a malformed file raises :class:`InputError` saying where."""
    try:
        return msgspec.json.decode(data, type=_FILE)
    except msgspec.ValidationError as e:
        raise InputError(f"{name}: not in the Ego4D narration.json layout: {e}") from None
    except msgspec.DecodeError as e:
        if b"NaN" not in data and b"Infinity" not in data:
            raise InputError(f"{name}: not valid JSON ({e})") from None
    try:  # Python-written JSON with NaN / Infinity literals
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: not valid JSON ({e})") from None
    try:
        return msgspec.convert(obj, type=_FILE)
    except msgspec.ValidationError as e:
        raise InputError(f"{name}: not in the Ego4D narration.json layout: {e}") from None


def read_narration_json(data: bytes, name: str = "narration.json") -> tuple[pa.Table, pa.Table]:
    """Narrations (RAW schema, one row per narration, file order) and summaries of a narration.json.

    A narration's id is ``<video_uid>:<pass>:<index in its pass>``: stable for the same file.
    (Ego4D's ``annotation_uid`` names a whole annotation pass, not one narration.)
    """
    videos = decode(data, name)
    rows = RawRows()
    summaries: dict[str, list] = {n: [] for n in SUMMARIES.names}
    for video_uid, video in videos.items():
        for pass_key, pass_no in PASSES.items():
            ann = getattr(video, pass_key)
            if ann is None:
                continue
            for i, n in enumerate(ann.narrations):
                ts = n.timestamp_sec
                rows.add(f"{video_uid}:{pass_no}:{i}", video_uid, "ego4d", n.narration_text, ts, ts, pass_=pass_no)
            for i, s in enumerate(ann.summaries):
                start, _ = as_seconds(s.start_sec, "start")
                end, _ = as_seconds(s.end_sec, "end")
                text = s.summary_text if isinstance(s.summary_text, str) else None
                for key, value in (
                    ("summary_id", f"{video_uid}:{pass_no}:s{i}"),
                    ("video_uid", video_uid),
                    ("pass", pass_no),
                    ("raw_text", text),
                    ("text", None),
                    ("t_start", start),
                    ("t_end", end),
                ):
                    summaries[key].append(value)
    summary_table = pa.table(
        {k: pa.array(v, SUMMARIES.field(k).type) for k, v in summaries.items()}, schema=SUMMARIES
    )
    return rows.to_table(), summary_table
