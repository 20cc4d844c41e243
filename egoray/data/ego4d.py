"""Reader for Ego4D ``narration.json``.

Decoded with msgspec straight into small typed structs (only the fields we use), which is several
times faster and lighter than ``json.load`` building a dict per narration. Files that msgspec
cannot read (Python's ``NaN`` literals) fall back to the standard library parser.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray.data.raw import InputError, RawRows, as_seconds, parse_json
from egoray.data.schema import RAW, SUMMARIES

PASSES = {"narration_pass_1": 1, "narration_pass_2": 2}


class _Narration(msgspec.Struct):
    # Only the fields we use: msgspec skips the others (timestamp_frame, annotation_uid) unread.
    timestamp_sec: float | str | None = None
    narration_text: str | float | None = None


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
    obj = parse_json(data, name)  # Python-written JSON with NaN / Infinity literals
    try:
        return msgspec.convert(obj, type=_FILE)
    except msgspec.ValidationError as e:
        raise InputError(f"{name}: not in the Ego4D narration.json layout: {e}") from None


def split_by_video(data: bytes, bucket_of_video, name: str = "narration.json") -> dict[int, bytes]:
    """Cut a narration.json into smaller narration.json documents, one per bucket of videos.

    Only the top level is parsed (each video's value is kept as raw bytes), so this is a fast
    scan, and the expensive decoding happens later, in parallel, one bucket per task.
    ``bucket_of_video(list_of_uids) -> list_of_buckets``.
    """
    try:
        videos = msgspec.json.decode(data, type=dict[str, msgspec.Raw])
        encoded = {uid: bytes(raw) for uid, raw in videos.items()}
    except msgspec.ValidationError as e:
        raise InputError(f"{name}: not in the Ego4D narration.json layout: {e}") from None
    except msgspec.DecodeError as e:
        if b"NaN" not in data and b"Infinity" not in data:
            raise InputError(f"{name}: not valid JSON ({e})") from None
        obj = parse_json(data, name)
        if not isinstance(obj, dict):
            raise InputError(f"{name}: not in the Ego4D narration.json layout: expected an object") from None
        encoded = {uid: json.dumps(value).encode() for uid, value in obj.items()}
    uids = list(encoded)
    pieces: dict[int, list[bytes]] = {}
    for uid, bucket in zip(uids, bucket_of_video(uids), strict=True):
        pieces.setdefault(bucket, []).append(msgspec.json.encode(uid) + b":" + encoded[uid])
    return {b: b"{" + b",".join(parts) + b"}" for b, parts in pieces.items()}


def read_narration_json(data: bytes, name: str = "narration.json") -> tuple[pa.Table, pa.Table]:
    """Narrations (RAW schema, one row per narration, file order) and summaries of a narration.json.

    A narration's id is ``<video_uid>:<pass>:<index in its pass>``: stable for the same file.
    (Ego4D's ``annotation_uid`` names a whole annotation pass, not one narration.)
    """
    videos = decode(data, name)
    del data
    raw = _narrations_columnar(videos)
    if raw is None:  # odd value types somewhere: take the exact row-by-row path
        raw = _narrations_rowwise(videos)
    return raw, _summaries(videos)


def _passes(videos: dict[str, _Video]):
    for video_uid, video in videos.items():
        for pass_key, pass_no in PASSES.items():
            ann = getattr(video, pass_key)
            if ann is not None:
                yield video_uid, pass_no, ann


def _narrations_columnar(videos: dict[str, _Video]) -> pa.Table | None:
    """Fast path: whole columns at once; None if a value is not a float/str/null as expected."""
    uids: list[str] = []
    counts: list[int] = []
    pass_of_run: list[int] = []
    stamps: list = []
    texts: list = []
    for video_uid, pass_no, ann in _passes(videos):
        narrs = ann.narrations
        uids.append(video_uid)
        counts.append(len(narrs))
        pass_of_run.append(pass_no)
        stamps.extend([n.timestamp_sec for n in narrs])
        texts.extend([n.narration_text for n in narrs])
    try:
        t = pa.array(stamps, pa.float64())
        text = pa.array(texts, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return None
    n = len(stamps)
    runs = np.asarray(counts, dtype=np.int64)
    run_index = np.repeat(np.arange(len(runs)), runs)
    starts = np.cumsum(runs) - runs
    position = np.arange(n, dtype=np.int64) - np.repeat(starts, runs)
    video = pa.DictionaryArray.from_arrays(pa.array(run_index, pa.int32()), pa.array(uids, pa.string()))
    video = video.cast(pa.string())
    pass_ = pa.array(np.asarray(pass_of_run, dtype=np.int8)[run_index], pa.int8())
    ids = pc.binary_join_element_wise(video, pc.cast(pass_, pa.string()), pc.cast(pa.array(position), pa.string()), ":")

    null_t = pc.is_null(t)
    inf_t = pc.fill_null(pc.is_inf(t), False)
    null_text = pc.is_null(text)
    issue = pc.if_else(pc.or_(null_t, inf_t), "bad_timestamp",
                       pc.if_else(null_text, "missing_field", pa.scalar(None, pa.string())))
    detail = pc.if_else(null_t, "no start timestamp",
                        pc.if_else(inf_t, "start timestamp is infinite",
                                   pc.if_else(null_text, "no narration text", pa.scalar(None, pa.string()))))
    t = pc.if_else(inf_t, pa.scalar(None, pa.float64()), t)
    nulls = pa.nulls(n, pa.string())
    columns = {
        "narration_id": ids, "video_uid": video, "clip_uid": nulls, "source": pa.array(["ego4d"] * n, pa.string()),
        "pass": pass_, "raw_text": text, "t_start": t, "t_end": t, "split": nulls, "verb": nulls, "noun": nulls,
        "issue": issue, "issue_detail": detail,
    }
    return pa.table({k: pc.cast(v, RAW.field(k).type) for k, v in columns.items()}, schema=RAW)


def _narrations_rowwise(videos: dict[str, _Video]) -> pa.Table:
    rows = RawRows()
    for video_uid, pass_no, ann in _passes(videos):
        for i, n in enumerate(ann.narrations):
            ts = n.timestamp_sec
            rows.add(f"{video_uid}:{pass_no}:{i}", video_uid, "ego4d", n.narration_text, ts, ts, pass_=pass_no)
    return rows.to_table()


def _summaries(videos: dict[str, _Video]) -> pa.Table:
    summaries: dict[str, list] = {n: [] for n in SUMMARIES.names}
    for video_uid, pass_no, ann in _passes(videos):
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
    return pa.table({k: pa.array(v, SUMMARIES.field(k).type) for k, v in summaries.items()}, schema=SUMMARIES)
