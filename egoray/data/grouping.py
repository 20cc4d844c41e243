"""Groups of consecutive narrations: the unit a question–answer pair is written about."""

from __future__ import annotations

import pyarrow as pa

GROUPS = pa.schema(
    [
        ("group_id", pa.string()),
        ("video_uid", pa.string()),
        ("pass", pa.int8()),
        ("narration_ids", pa.list_(pa.string())),
        ("texts", pa.list_(pa.string())),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
    ]
)


def group_narrations(narrations: pa.Table, max_group: int = 5, max_span: float = 30.0) -> pa.Table:
    """Greedy, deterministic grouping within each (video, pass) in time order.

    A group starts at the first ungrouped narration and takes the following ones while it has
    fewer than ``max_group`` and the last one starts less than ``max_span`` seconds after the first.
    The group id is ``g:<first narration id>``.
    """
    t = narrations.select(["narration_id", "video_uid", "pass", "text", "t_start", "t_end"]).sort_by(
        [("video_uid", "ascending"), ("pass", "ascending"), ("t_start", "ascending"), ("narration_id", "ascending")]
    )
    cols = {name: t[name].to_pylist() for name in t.column_names}
    out: dict[str, list] = {name: [] for name in GROUPS.names}
    n = t.num_rows
    i = 0
    while i < n:
        j = i + 1
        while (j < n and j - i < max_group and cols["video_uid"][j] == cols["video_uid"][i]
               and cols["pass"][j] == cols["pass"][i] and cols["t_start"][j] - cols["t_start"][i] < max_span):
            j += 1
        out["group_id"].append(f"g:{cols['narration_id'][i]}")
        out["video_uid"].append(cols["video_uid"][i])
        out["pass"].append(cols["pass"][i])
        out["narration_ids"].append(cols["narration_id"][i:j])
        out["texts"].append(cols["text"][i:j])
        out["t_start"].append(min(cols["t_start"][i:j]))
        out["t_end"].append(max(cols["t_end"][i:j]))
        i = j
    return pa.table(out, schema=GROUPS)
