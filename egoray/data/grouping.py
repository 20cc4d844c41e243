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


def group_narrations(narrations: pa.Table, max_group: int = 5, max_span: float = 30.0,
                     seed: int | None = None) -> pa.Table:
    """Consecutive narrations of one (video, pass) in time order, as GroundVQA groups them for
    EgoTimeQA.

    From the first ungrouped narration, the longest run of at most ``max_group`` whose span (the
    last one's end minus the first one's start) is under ``max_span`` is found (one narration at
    least); the group takes a length drawn uniformly from 1 to that run's — with a generator
    seeded from (``seed``, video, pass), so a clip's groups are the same in every run and on every
    worker. ``seed=None`` takes the whole run (the longest groups). The group id is
    ``g:<first narration id>``.
    """
    import numpy as np

    from egoray.data.seeds import row_seed

    t = narrations.select(["narration_id", "video_uid", "pass", "text", "t_start", "t_end"]).sort_by(
        [("video_uid", "ascending"), ("pass", "ascending"), ("t_start", "ascending"), ("narration_id", "ascending")]
    )
    cols = {name: t[name].to_pylist() for name in t.column_names}
    out: dict[str, list] = {name: [] for name in GROUPS.names}
    n = t.num_rows
    i = 0
    rng = None
    while i < n:
        key = (cols["video_uid"][i], cols["pass"][i])
        if seed is not None and (i == 0 or key != (cols["video_uid"][i - 1], cols["pass"][i - 1])):
            rng = np.random.default_rng(row_seed(seed, "group", *key))
        j = i + 1  # the longest run: same clip, at most max_group, span under max_span
        while (j < n and j - i < max_group and (cols["video_uid"][j], cols["pass"][j]) == key
               and cols["t_end"][j] - cols["t_start"][i] < max_span):
            j += 1
        if rng is not None:
            j = i + int(rng.integers(1, j - i + 1))
        out["group_id"].append(f"g:{cols['narration_id'][i]}")
        out["video_uid"].append(cols["video_uid"][i])
        out["pass"].append(cols["pass"][i])
        out["narration_ids"].append(cols["narration_id"][i:j])
        out["texts"].append(cols["text"][i:j])
        out["t_start"].append(min(cols["t_start"][i:j]))
        out["t_end"].append(max(cols["t_end"][i:j]))
        i = j
    return pa.table(out, schema=GROUPS)
