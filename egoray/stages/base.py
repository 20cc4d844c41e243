"""Stages and sinks: the Ray-free halves of every streaming job.

A :class:`Stage` maps a batch (an Arrow table, one row per work item) to a batch with more
columns. It never drops a row: a row it cannot use is *marked* with a reason code in the reject
columns, and later stages pass marked rows through untouched. ``setup()`` loads the model, once
per actor; ``resources`` tells the executor how many actors to start and what each needs.

A :class:`Sink` turns a finished batch into files under the job's output: the usable rows into
the job's tables (its own code), the marked rows into ``rejects/``, and per-stage counts into
``_counts/``. Every file a sink writes for one batch starts with the same ``base`` name, which is
what lets the executor commit or roll back a batch as a whole (see :mod:`egoray.executor`).

Both are plain classes: they are unit-tested without Ray, and the executor runs them on Ray Data.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.data.schema import REJECTS, reject_table

REASON, STAGE, DETAIL, INPUT = "_reject_reason", "_reject_stage", "_reject_detail", "_reject_input"
REJECT_COLUMNS = (REASON, STAGE, DETAIL, INPUT)
COUNTS_DIR = "_counts"


@dataclass(frozen=True)
class Resources:
    """What one stage asks of the cluster: ``actors`` actors of ``cpus``/``gpus`` each, fed
    ``batch_size`` rows per call (``batch_size`` None: whole blocks)."""

    cpus: float = 1.0
    gpus: float = 0.0
    actors: int = 1
    batch_size: int | None = 16

    @property
    def threads(self) -> int:
        """Torch threads per actor: its whole CPUs, at least one."""
        return max(1, int(self.cpus))


class Stage:
    """One model or transform over batches of work items.

    Subclasses set ``name`` and implement :meth:`process`, which sees only the rows no earlier
    stage rejected and returns them (same count) with the columns it adds, marking the rows it
    cannot use with :meth:`reject`. :meth:`__call__` does the bookkeeping around it.
    """

    name: ClassVar[str] = "stage"

    def __init__(self, resources: Resources | None = None) -> None:
        self.resources = resources or Resources()

    def setup(self) -> None:
        """Load models and other heavy state (once per actor, never in the driver)."""

    def process(self, rows: pa.Table) -> pa.Table:
        raise NotImplementedError

    def units(self) -> dict[str, int]:
        """Work done since the last call (e.g. tokens generated), for cluster metrics."""
        return {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = with_reject_columns(batch)
        ok = pending(batch)
        if ok.all():
            return self._checked(batch, self.process(batch))
        done = batch.filter(pa.array(~ok))
        todo = batch.filter(pa.array(ok))
        out = self._checked(todo, self.process(todo)) if todo.num_rows else None
        if out is None:
            return done
        return pa.concat_tables([out, done.cast(_nullable_superset(done.schema, out.schema))],
                                promote_options="default")

    def _checked(self, before: pa.Table, after: pa.Table) -> pa.Table:
        if after.num_rows != before.num_rows:
            raise RuntimeError(f"stage {self.name}: {before.num_rows} rows in, {after.num_rows} out; a stage "
                               "marks rows it cannot use instead of dropping them")
        return with_reject_columns(after)

    def reject(self, rows: pa.Table, mask: Sequence[bool] | np.ndarray, reason: str | Sequence[str],
               detail: str | Sequence[str] = "", input: str | Sequence[str] | None = None) -> pa.Table:
        """``rows`` with the rows under ``mask`` marked as rejected by this stage."""
        return mark(rows, mask, self.name, reason, detail, input)


def with_reject_columns(batch: pa.Table) -> pa.Table:
    """``batch`` with the (null) reject columns added where missing."""
    for name in REJECT_COLUMNS:
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()))
    return batch


def pending(batch: pa.Table) -> np.ndarray:
    """Bool mask of the rows nobody rejected yet."""
    if REASON not in batch.column_names:
        return np.ones(batch.num_rows, dtype=bool)
    return pc.is_null(batch[REASON]).to_numpy(zero_copy_only=False)


def mark(rows: pa.Table, mask: Sequence[bool] | np.ndarray, stage: str, reason: str | Sequence[str],
         detail: str | Sequence[str] = "", input: str | Sequence[str] | None = None) -> pa.Table:
    """Mark the rows under ``mask`` (not yet rejected) as rejected by ``stage`` with ``reason``."""
    rows = with_reject_columns(rows)
    n = rows.num_rows
    new = np.asarray(mask, dtype=bool) & pending(rows)
    if not new.any():
        return rows

    def column(value: Any) -> pa.Array:
        values = [value] * n if value is None or isinstance(value, str) else list(value)
        if len(values) != n:
            raise ValueError(f"{len(values)} reject values for {n} rows")
        return pa.array([str(v)[:8000] if v is not None else None for v in values], pa.string())

    cond = pa.array(new)
    for name, value in ((REASON, reason), (STAGE, stage), (DETAIL, detail), (INPUT, input)):
        index = rows.schema.get_field_index(name)
        rows = rows.set_column(index, name, pc.if_else(cond, column(value), rows[name]))
    return rows


def _nullable_superset(schema: pa.Schema, other: pa.Schema) -> pa.Schema:
    """``schema`` with its columns typed as in ``other`` where both have them (rejected rows
    carry nulls in the columns a stage adds)."""
    fields = [other.field(f.name) if f.name in other.names else f for f in schema]
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


@dataclass
class StageCounts:
    """What one stage saw: ``n_in == n_out + rejected`` always holds for a finished stage."""

    n_in: int = 0
    n_out: int = 0
    rejected: int = 0
    seconds: float = 0.0

    def add(self, other: StageCounts) -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        self.rejected += other.rejected
        self.seconds += other.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"in": self.n_in, "out": self.n_out, "rejected": self.rejected, "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageCounts:
        return cls(int(d["in"]), int(d["out"]), int(d["rejected"]), float(d.get("seconds", 0.0)))


class StageTimer:
    """Collects per-stage counts inside one unit of work: ``with timer.stage("x") as c: c.n_in = ...``."""

    def __init__(self) -> None:
        self.stages: dict[str, StageCounts] = {}

    class _Ctx:
        def __init__(self, counts: StageCounts) -> None:
            self.counts = counts

        def __enter__(self) -> StageCounts:
            self.t0 = time.perf_counter()
            return self.counts

        def __exit__(self, *exc: object) -> None:
            self.counts.seconds += time.perf_counter() - self.t0

    def stage(self, name: str) -> StageTimer._Ctx:
        return self._Ctx(self.stages.setdefault(name, StageCounts()))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: v.to_dict() for k, v in self.stages.items()}


def stage_counts(batch: pa.Table, stages: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per-stage in / out / rejected of a finished batch: every row enters the first stage, a
    stage's survivors enter the next. Rejects of a stage not listed count for the first stage."""
    n = batch.num_rows
    by_stage: dict[str, int] = {}
    if STAGE in batch.column_names and n:
        counts = pc.value_counts(pc.drop_null(batch[STAGE]))
        by_stage = {d["values"]: d["counts"] for d in counts.to_pylist()}
    unknown = sum(v for k, v in by_stage.items() if k not in stages)
    out: dict[str, dict[str, int]] = {}
    remaining = n
    for i, name in enumerate(stages):
        rejected = by_stage.get(name, 0) + (unknown if i == 0 else 0)
        out[name] = {"in": remaining, "out": remaining - rejected, "rejected": rejected}
        remaining -= rejected
    return out


# ---------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------


@dataclass
class Sink:
    """Writes finished batches under ``output``: usable rows by :meth:`write_rows` (the job's
    tables), rejected rows to ``rejects/``, counts to ``_counts/``; all named ``<base>.*``.

    ``id_column`` names each work item in ``rejects.record_id``; ``input_columns`` are copied
    (as JSON) into ``rejects.input`` unless the rejecting stage gave its own.
    """

    id_column: str
    stages: Sequence[str]
    input_columns: Sequence[str] = field(default_factory=tuple)

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        """Write the usable rows of one batch; returns units of work done (frames, captions, ...)."""
        raise NotImplementedError

    def empty_tables(self) -> dict[str, pa.Table]:
        """Empty tables (with their schemas) for a job that wrote no rows to them: readers find a
        table with no rows rather than no table."""
        return {"rejects": REJECTS.empty_table()}

    def write(self, batch: pa.Table, output: str, base: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write one finished batch; returns (and writes) its counts record (with ``extra``, e.g.
        the node that wrote it)."""
        batch = with_reject_columns(batch)
        ok = pending(batch)
        units = self.write_rows(drop_reject_columns(batch.filter(pa.array(ok))), output, base) if ok.any() else {}
        rejects = self.rejects(batch.filter(pa.array(~ok)))
        if rejects.num_rows:
            write_part(output, "rejects", base, rejects)
        record = {"base": base, "items": batch.num_rows, "stages": stage_counts(batch, self.stages),
                  "units": {k: int(v) for k, v in units.items()}, **(extra or {})}
        storage.write_json(storage.join(output, COUNTS_DIR, f"{base}.json"), record)
        return record

    def rejects(self, rows: pa.Table) -> pa.Table:
        if rows.num_rows == 0:
            return REJECTS.empty_table()
        given = rows[INPUT].to_pylist()
        if self.input_columns:
            keep = rows.select([c for c in self.input_columns if c in rows.column_names]).to_pylist()
            inputs = [g if g is not None else _json(k) for g, k in zip(given, keep, strict=True)]
        else:
            inputs = [g or "" for g in given]
        return reject_table(rows[self.id_column], rows[STAGE], rows[REASON], rows[DETAIL], inputs)


def with_constants(rows: pa.Table, **values: str) -> pa.Table:
    """``rows`` with a string column per keyword, the same value in every row (model, version, ...)."""
    for name, value in values.items():
        rows = rows.append_column(name, pa.array([value] * rows.num_rows, pa.string()))
    return rows


def drop_reject_columns(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in REJECT_COLUMNS if c in batch.column_names])


def write_part(output: str, table: str, base: str, rows: pa.Table) -> str:
    """Write ``OUTPUT/<table>/<base>.parquet`` atomically; returns its URL."""
    url = storage.join(output, table, f"{base}.parquet")
    storage.write_parquet(url, rows)
    return url


def _json(row: Mapping[str, Any]) -> str:
    clean = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    text = json.dumps(clean, ensure_ascii=False, default=str)
    return text if len(text) <= 4000 else text[:4000] + "..."


def read_counts(output: str) -> list[dict[str, Any]]:
    """Every committed batch's counts record under ``output``."""
    return [storage.read_json(u) for u in storage.listdir(storage.join(output, COUNTS_DIR), ".json")]


def total_counts(records: Sequence[Mapping[str, Any]], stages: Sequence[str]) -> dict[str, StageCounts]:
    """Per-stage totals over counts records (stages in the given order)."""
    totals = {name: StageCounts() for name in stages}
    for record in records:
        for name, c in record.get("stages", {}).items():
            totals.setdefault(name, StageCounts()).add(StageCounts.from_dict(c))
    return totals
