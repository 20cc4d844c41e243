"""Arrow schemas of the tables every job shares (DESIGN §4)."""

from __future__ import annotations

import pyarrow as pa

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


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
