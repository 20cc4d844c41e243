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
        ("raw_texts", pa.list_(pa.string())),  # as annotated ("#C C picks ... ."), for prompts written for it
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
    ]
)


def group_narrations(narrations: pa.Table, max_group: int = 5, max_span: float = 30.0,
                     seed: int | None = None) -> pa.Table:
    """Consecutive narrations of one (video, pass) in time order, as GroundVQA groups them for
    EgoTimeQA.

    From the first ungrouped narration, the next ``max_group`` of its clip are taken and shrunk
    from the top while the span (the last one's end minus the first one's start) is ``max_span``
    or more (one narration at least), as GroundVQA's ``_sample_narrations`` does, so a long
    narration in the middle does not cut a group short; the group takes a length drawn uniformly
    from 1 to that run's, and spans the first one's start to the last one's end — with a generator
    seeded from (``seed``, video, pass), so a clip's groups are the same in every run and on every
    worker. ``seed=None`` takes the whole run (the longest groups). The group id is
    ``g:<first narration id>``. ``raw_texts`` are the narrations as annotated (``text`` where the
    table has no ``raw_text``).
    """
    import numpy as np

    from egoray.data.seeds import row_seed

    if "raw_text" not in narrations.column_names:
        narrations = narrations.append_column("raw_text", narrations["text"])
    t = narrations.select(["narration_id", "video_uid", "pass", "text", "raw_text", "t_start", "t_end"]).sort_by(
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
        j = i + 1  # the clip's next max_group narrations at most...
        while j < n and j - i < max_group and (cols["video_uid"][j], cols["pass"][j]) == key:
            j += 1
        # ...shrunk from the top while the last one's end is max_span or more after the first's start
        while j - 1 > i and cols["t_end"][j - 1] - cols["t_start"][i] >= max_span:
            j -= 1
        if rng is not None:
            j = i + int(rng.integers(1, j - i + 1))
        out["group_id"].append(f"g:{cols['narration_id'][i]}")
        out["video_uid"].append(cols["video_uid"][i])
        out["pass"].append(cols["pass"][i])
        out["narration_ids"].append(cols["narration_id"][i:j])
        out["texts"].append(cols["text"][i:j])
        out["raw_texts"].append(cols["raw_text"][i:j])
        out["t_start"].append(cols["t_start"][i])
        out["t_end"].append(cols["t_end"][j - 1])  # the last narration's end, as GroundVQA's end_sec
        i = j
    return pa.table(out, schema=GROUPS)
