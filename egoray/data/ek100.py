"""Reader for EPIC-KITCHENS-100 annotation CSVs (``EPIC_100_train.csv``, ``EPIC_100_validation.csv``).

Read with pyarrow's CSV reader, every column as text, and converted column-wise: timestamps are
``HH:MM:SS.ff`` strings.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from egoray.data.raw import InputError
from egoray.data.schema import RAW

REQUIRED = ("narration_id", "video_id", "start_timestamp", "stop_timestamp", "narration")
_HMS = r"^\s*(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d+(?:\.\d+)?)\s*$"


def split_from_name(name: str) -> str | None:
    """EK-100 files name their split: ``..._train.csv``, ``..._validation.csv``, ``..._test...``."""
    lower = name.lower()
    for key, split in (("validation", "val"), ("train", "train"), ("test", "test")):
        if key in lower:
            return split
    return None


def hms_to_seconds(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``HH:MM:SS.ff`` → float seconds; anything else → null."""
    parts = pc.extract_regex(values, _HMS)
    h = pc.cast(pc.struct_field(parts, "h"), pa.float64())
    m = pc.cast(pc.struct_field(parts, "m"), pa.float64())
    s = pc.cast(pc.struct_field(parts, "s"), pa.float64())
    return pc.add(pc.add(pc.multiply(h, 3600.0), pc.multiply(m, 60.0)), s)


def read_ek100_csv(data: bytes, name: str = "EPIC_100.csv") -> pa.Table:
    """RAW rows, one per CSV row; the narration id is EK-100's own ``narration_id``."""
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False, auto_dict_encode=False),
            read_options=pacsv.ReadOptions(use_threads=True),
        )
    except pa.ArrowInvalid as e:
        raise InputError(f"{name}: not a readable CSV ({e})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(f"{name}: missing column(s) {missing}; found {table.column_names}")
    table = table.select([c for c in table.column_names if c in (*REQUIRED, "verb", "noun")])
    table = pa.table({c: pc.cast(table[c], pa.string()) for c in table.column_names})
    n = table.num_rows

    start = hms_to_seconds(table["start_timestamp"])
    end = hms_to_seconds(table["stop_timestamp"])
    bad_time = pc.or_(pc.is_null(start), pc.is_null(end))
    text = table["narration"]
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    issue = pc.if_else(bad_time, "bad_timestamp", pa.scalar(None, pa.string()))
    detail = pc.if_else(
        bad_time,
        pc.binary_join_element_wise("timestamps not HH:MM:SS.ff: ", table["start_timestamp"], " / ",
                                    table["stop_timestamp"], ""),
        pa.scalar(None, pa.string()),
    )
    null_str = pa.nulls(n, pa.string())
    columns = {
        "narration_id": table["narration_id"],
        "video_uid": table["video_id"],
        "clip_uid": null_str,
        "source": pa.array(["ek100"] * n, pa.string()),
        "pass": pa.nulls(n, pa.int8()),
        "raw_text": pc.if_else(empty, pa.scalar("", pa.string()), text),
        "t_start": start,
        "t_end": end,
        "split": pa.array([split_from_name(name)] * n, pa.string()),
        "verb": table["verb"] if "verb" in table.column_names else null_str,
        "noun": table["noun"] if "noun" in table.column_names else null_str,
        "issue": issue,
        "issue_detail": detail,
    }
    return pa.table({k: pc.cast(v, RAW.field(k).type) for k, v in columns.items()}, schema=RAW)
