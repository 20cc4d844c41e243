"""ActivityNet Captions annotations, as the captioning lab (seed 002) uses them for references.

Read in either layout: the original JSON (``{video_id: {"duration", "timestamps": [[s, e], ...],
"sentences": [...]}}``) or the Hugging Face dataset's rows (``friedrichor/ActivityNet_Captions``:
``video_id, caption, duration, timestamps, sentences``, as Parquet, a JSON list or JSON lines).
Each sentence becomes a narration of its interval (id ``<video_id>:<k>``) and each video's
paragraph (``caption``, else its sentences joined) a summary over the whole video — the
references of ``eval`` (``captioning`` kind ``summaries`` / ``narrations``) and ``egoray score
captions``. A video whose timestamps and sentences do not pair up is rejected (``bad_record``).
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa

from egoray.data.raw import InputError, RawRows
from egoray.data.schema import SUMMARIES

SOURCE = "activitynet"


def _records(data: bytes, name: str) -> list[dict[str, Any]]:
    """The annotation rows, whatever the layout, each with ``video_id``."""
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as e:  # pyarrow raises ArrowInvalid for a file that is not Parquet
            raise InputError(f"{name}: not a readable Parquet file ({e})") from None
    text = data.decode("utf-8")
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise InputError(f"{name}: neither JSON nor JSON lines ({e})") from None
    if isinstance(obj, dict):
        return [{"video_id": k, **v} if isinstance(v, dict) else {"video_id": k, "_bad": v} for k, v in obj.items()]
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        return obj
    raise InputError(f"{name}: expected {{video_id: {{timestamps, sentences}}}} or a list of rows with video_id")


def read_activitynet(data: bytes, name: str = "activitynet_captions.json") -> tuple[pa.Table, pa.Table]:
    """RAW narrations (one per sentence) and summaries (one paragraph per video)."""
    rows = RawRows()
    summaries: dict[str, list[Any]] = {n: [] for n in SUMMARIES.names}
    for i, r in enumerate(_records(data, name)):
        vid = r.get("video_id")
        if not isinstance(vid, str) or not vid:
            rows.add(f"record:{i}", None, SOURCE, None, None, None, issue="missing_field", issue_detail="no video_id")
            continue
        stamps, sentences = r.get("timestamps"), r.get("sentences")
        if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
            rows.add(f"{vid}:*", vid, SOURCE, None, None, None, issue="bad_record",
                     issue_detail="timestamps and sentences are not lists of the same length")
            continue
        for k, (span, sentence) in enumerate(zip(stamps, sentences, strict=True)):
            ok = isinstance(span, list | tuple) and len(span) == 2
            rows.add(f"{vid}:{k}", vid, SOURCE, sentence, span[0] if ok else None, span[1] if ok else None,
                     issue=None if ok else "bad_timestamp", issue_detail=None if ok else f"timestamp {span!r}")
        paragraph = r.get("caption") if isinstance(r.get("caption"), str) else " ".join(
            s.strip() for s in sentences if isinstance(s, str))
        duration = r.get("duration")
        for key, value in (("summary_id", vid), ("video_uid", vid), ("pass", None), ("raw_text", paragraph),
                           ("text", None), ("t_start", 0.0),
                           ("t_end", float(duration) if isinstance(duration, int | float) else None)):
            summaries[key].append(value)
    table = pa.table({k: pa.array(v, SUMMARIES.field(k).type) for k, v in summaries.items()}, schema=SUMMARIES)
    return rows.to_table(), table
