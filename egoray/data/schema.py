"""Arrow schemas of the tables every job shares (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

SOURCES = ("ego4d", "em_pkl", "ek100", "synthetic")
SPLITS = ("train", "val", "test")

# What a reader produces: one row per input record, values as found (or null), plus the
# problem the reader already saw (``issue``) so that the validate stage can reject it.
RAW = pa.schema(
    [
        ("narration_id", pa.string()),
        ("video_uid", pa.string()),
        ("clip_uid", pa.string()),
        ("source", pa.string()),
        ("pass", pa.int8()),
        ("raw_text", pa.string()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("split", pa.string()),
        ("verb", pa.string()),
        ("noun", pa.string()),
        ("issue", pa.string()),
        ("issue_detail", pa.string()),
    ]
)

NARRATIONS = pa.schema(
    [
        ("narration_id", pa.string()),
        ("video_uid", pa.string()),
        ("clip_uid", pa.string()),
        ("source", pa.string()),
        ("pass", pa.int8()),
        ("raw_text", pa.string()),
        ("text", pa.string()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("split", pa.string()),
        ("verb", pa.string()),
        ("noun", pa.string()),
    ]
)

SUMMARIES = pa.schema(
    [
        ("summary_id", pa.string()),
        ("video_uid", pa.string()),
        ("pass", pa.int8()),
        ("raw_text", pa.string()),
        ("text", pa.string()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
    ]
)

REJECTS = pa.schema(
    [
        ("record_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("input", pa.string()),
    ]
)


Column = pa.Array | pa.ChunkedArray | Sequence[str | None] | str | None


def reject_table(record_id: pa.Array | pa.ChunkedArray | Sequence[str], stage: Column, reason: Column,
                 detail: Column = None, input: Column = None) -> pa.Table:
    """The ``rejects`` table of ``len(record_id)`` records: every column as strings, a ``str`` the
    same for each record; missing details and inputs are empty strings."""
    n = len(record_id)

    def column(values: Column, fill: bool) -> pa.Array | pa.ChunkedArray:
        if values is None or isinstance(values, str):
            return pa.array([values or ""] * n, pa.string())
        array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
        array = pc.cast(array, pa.string())
        return pc.fill_null(array, "") if fill else array

    return pa.table({"record_id": column(record_id, False), "stage": column(stage, False),
                     "reason": column(reason, False), "detail": column(detail, True),
                     "input": column(input, True)}, schema=REJECTS)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
