"""The stages that turn reader output (RAW rows) into the narrations table (DESIGN §4).

validate → normalise → dedupe → splits. Each stage is vectorised over an Arrow table, keeps the
rows it can use and rejects the rest with a reason code, so that per stage
``in == out + rejected``. Ray-free: the ingest pipeline runs it once per shard.
"""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from egoray.config import StrictModel
from egoray.data import text as text_ops
from egoray.data.schema import NARRATIONS, REJECTS, SUMMARIES, reject_table
from egoray.stages.base import StageTimer

Split = Literal["train", "val", "test"]
_NULL = pa.scalar(None, pa.string())


class CleanOptions(StrictModel):
    """How narrations are cleaned and filtered."""

    tags: text_ops.TagWords = text_ops.TagWords()
    min_words: int = Field(0, ge=0, description="reject narrations with fewer words (after clean-up)")
    default_split: Split = Field("train", description="split of a video the splits file does not list")
    drop_splits: list[Split] = Field(default_factory=list, description="splits whose videos are removed")


class Reasons:
    """Accumulates the first reject reason per row of one table."""

    def __init__(self, n: int) -> None:
        self.reason = pa.nulls(n, pa.string())
        self.detail = pa.nulls(n, pa.string())

    def mark(self, cond: pa.Array, code: str, detail: pa.Array | str) -> None:
        cond = pc.fill_null(cond, False)
        new = pc.and_(pc.is_null(self.reason), cond)
        self.reason = pc.if_else(new, code, self.reason)
        self.detail = pc.if_else(new, detail, self.detail)

    def take(self, fill_from: pa.Array, detail_from: pa.Array) -> None:
        """Adopt reasons already found by the reader."""
        self.reason = pc.coalesce(self.reason, fill_from)
        self.detail = pc.coalesce(self.detail, detail_from)

    def ok(self) -> pa.Array:
        return pc.is_null(self.reason)


def build_narrations(
    raw: pa.Table,
    options: CleanOptions,
    splits: dict[str, str] | None,
    timer: StageTimer,
) -> tuple[pa.Table, pa.Table]:
    """RAW rows → (narrations, rejects). ``timer`` receives per-stage counts."""
    rejects: list[pa.Table] = []

    with timer.stage("validate") as c:
        c.n_in = raw.num_rows
        r = Reasons(raw.num_rows)
        r.take(raw["issue"], raw["issue_detail"])
        r.mark(pc.is_null(raw["video_uid"]), "missing_field", "no video uid")
        for col in ("t_start", "t_end"):
            r.mark(pc.is_nan(raw[col]), "bad_timestamp", f"{col} is NaN")
            r.mark(pc.less(raw[col], 0.0), "bad_timestamp", f"{col} is negative")
        r.mark(pc.less(raw["t_end"], raw["t_start"]), "bad_timestamp", "t_end before t_start")
        r.mark(
            pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(raw["raw_text"])), 0), "empty_text", "text is empty"
        )
        raw = _split_off(raw, r, "validate", rejects)
        c.n_out, c.rejected = raw.num_rows, c.n_in - raw.num_rows

    with timer.stage("normalise") as c:
        c.n_in = raw.num_rows
        cleaned, words = text_ops.normalise_distinct(raw["raw_text"], options.tags)
        raw = raw.append_column("text", cleaned)
        r = Reasons(raw.num_rows)
        r.mark(pc.equal(words, 0), "empty_text", "nothing left after tag clean-up")
        if options.min_words:
            r.mark(pc.less(words, options.min_words), "too_few_words", f"fewer than {options.min_words} words")
        raw = _split_off(raw, r, "normalise", rejects)
        c.n_out, c.rejected = raw.num_rows, c.n_in - raw.num_rows

    with timer.stage("dedupe") as c:
        c.n_in = raw.num_rows
        r = Reasons(raw.num_rows)
        r.mark(_repeated(raw, ["narration_id"]), "duplicate_id", "narration id seen earlier in the input")
        r.mark(
            _repeated(raw, ["video_uid", "pass", "t_start", "t_end", "raw_text"]),
            "duplicate_narration",
            "same video, pass, time and text as an earlier narration",
        )
        raw = _split_off(raw, r, "dedupe", rejects)
        c.n_out, c.rejected = raw.num_rows, c.n_in - raw.num_rows

    with timer.stage("splits") as c:
        c.n_in = raw.num_rows
        split = raw["split"]
        if splits:
            listed = pa.array([splits.get(v) for v in raw["video_uid"].to_pylist()], pa.string())
            split = pc.coalesce(listed, split)
        split = pc.fill_null(split, options.default_split)
        raw = raw.set_column(raw.schema.get_field_index("split"), "split", split)
        r = Reasons(raw.num_rows)
        if options.drop_splits:
            dropped = pc.is_in(split, value_set=pa.array(options.drop_splits, pa.string()))
            r.mark(dropped, "split_excluded", pc.binary_join_element_wise("video is in split ", split, ""))
        raw = _split_off(raw, r, "splits", rejects)
        c.n_out, c.rejected = raw.num_rows, c.n_in - raw.num_rows

    out = raw.select(NARRATIONS.names).cast(NARRATIONS)
    out = out.sort_by([("video_uid", "ascending"), ("pass", "ascending"), ("t_start", "ascending"),
                       ("t_end", "ascending"), ("narration_id", "ascending")])
    reject_table = pa.concat_tables(rejects) if rejects else REJECTS.empty_table()
    return out, reject_table


def clean_summaries(summaries: pa.Table, options: CleanOptions) -> pa.Table:
    """Normalise summary texts (``#Summary`` prefix dropped) and keep the usable ones."""
    text = pc.replace_substring_regex(summaries["raw_text"], r"(?i)^\s*#summary\b", "")
    text = text_ops.normalise(text, options.tags)
    table = summaries.set_column(summaries.schema.get_field_index("text"), "text", text)
    keep = pc.fill_null(pc.greater(pc.utf8_length(text), 0), False)
    return table.filter(keep).cast(SUMMARIES)


def _repeated(table: pa.Table, keys: list[str]) -> pa.Array:
    """True for every row whose key was already seen in an earlier row."""
    n = table.num_rows
    if n == 0:
        return pa.array([], pa.bool_())
    if len(keys) == 1 and pc.count_distinct(table[keys[0]], mode="all").as_py() == n:
        return pa.array(np.zeros(n, dtype=bool))  # the common case: nothing repeats
    columns = {}
    for k in keys:  # strings → integer codes: hashing small ints is much cheaper than strings
        col = table[k]
        if pa.types.is_string(col.type):
            col = pc.dictionary_encode(col).combine_chunks().indices
        columns[k] = col
    columns["_row"] = pa.array(np.arange(n, dtype=np.int64))
    first = pa.table(columns).group_by(keys, use_threads=False).aggregate([("_row", "min")])["_row_min"]
    seen_before = np.ones(n, dtype=bool)
    seen_before[first.to_numpy()] = False
    return pa.array(seen_before)


def _split_off(table: pa.Table, reasons: Reasons, stage: str, rejects: list[pa.Table]) -> pa.Table:
    ok = reasons.ok()
    bad = pc.invert(ok)
    if pc.any(bad).as_py():
        rejected = table.filter(bad)
        rejects.append(reject_table(rejected["narration_id"], stage, reasons.reason.filter(bad),
                                    reasons.detail.filter(bad), [_input_json(row) for row in rejected.to_pylist()]))
    return table.filter(ok)


def _input_json(row: dict) -> str:
    keep = {k: row.get(k) for k in ("narration_id", "video_uid", "pass", "raw_text", "t_start", "t_end")}
    for k, v in keep.items():
        if isinstance(v, float) and not math.isfinite(v):
            keep[k] = str(v)
    text = json.dumps(keep, ensure_ascii=False)
    return text if len(text) <= 4000 else text[:4000] + "..."


def load_narrations(url: str, splits: list[str] | None = None) -> pa.Table:
    """The narrations table from an ingest output directory (its ``narrations/``) or any Parquet
    file/directory in the narrations schema; optionally only rows of the given splits."""
    from egoray import storage
    from egoray.data.raw import InputError

    source = storage.join(url, "narrations")
    if not storage.exists(source):
        source = url
    try:
        table = storage.read_parquet(source)
    except storage.StorageError as e:
        raise InputError(f"cannot read narrations: {e}") from None
    missing = [c for c in ("narration_id", "video_uid", "text", "t_start", "t_end") if c not in table.column_names]
    if missing:
        raise InputError(f"{source}: not a narrations table (missing {missing})")
    if splits and "split" in table.column_names:
        table = table.filter(pc.is_in(table["split"], value_set=pa.array(splits, pa.string())))
    return table


def check_narrations(url: str, needed: tuple[str, ...] = ("narration_id", "video_uid", "text", "t_start", "t_end")
                     ) -> str:
    """The narrations table a job reads (checked from its schema: no rows are read here)."""
    from egoray.data.tables import table_columns

    return table_columns(url, needed, "narrations table")[0]


class SplitFilter:
    """Keeps the rows of some splits (a picklable batch function for Ray Data)."""

    def __init__(self, splits: list[str]) -> None:
        self.splits = pa.array(list(splits), pa.string())

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "split" not in batch.column_names:
            return batch
        return batch.filter(pc.fill_null(pc.is_in(batch["split"], value_set=self.splits), False))


def split_filter(splits: list[str] | None) -> SplitFilter | None:
    return SplitFilter(splits) if splits else None
