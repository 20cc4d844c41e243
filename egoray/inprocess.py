"""The in-process executor: a streaming pass in this process, without Ray.

It runs the same :class:`~egoray.plans.Pass` as :mod:`egoray.executor` — the same stages
(``setup()`` once each, then every batch through
:func:`~egoray.stages.guard.call_guarded`, a raising row rejected), the same sink (the same
files, rejects and counts records) and the same error budget — one batch after another, for
debugging a stage with ``pdb`` or ``print`` and for fast tests of a job's plan. ``egoray run
--in-process`` (``ray.in_process: true``) selects it.

Resume: each batch is named after its place in the source (``local-<file>-<batch>``) and its
counts record is written last, so a run started again skips the batches with a record and
rewrites the others (their files are removed first). The same config reads the same batches.
An output is written by one executor: Ray Data's checkpoint knows nothing of the batches written
here, nor this executor of Ray's, so continuing with the other one is refused.

A job's prepared inputs (:class:`~egoray.plans.Prepared`: grouping narrations, cutting videos
into windows, a limit) are written here too (:func:`write_prepared`), from the whole source in
memory: this executor is for debugging and tests, not for inputs that need a cluster. Steps that
only Ray runs (training's and eval's inputs) refuse (:func:`refuse_in_process`).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq

from egoray import storage
from egoray.errors import EgorayError
from egoray.plans import CHECKPOINT_DIR, MapBatches, MapGroups, Pass, PassResult, Prepared, SortLimit, Source
from egoray.stages.base import Stage, pending, read_counts
from egoray.stages.guard import ErrorBudget, StageFailing, call_guarded

BASE_PREFIX = "local-"
_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("egoray_in_process_job", default=None)


class NeedsRay(EgorayError, RuntimeError):
    """A step of this job runs on Ray only, and the job was asked to run in process."""


class ExecutorConflict(EgorayError, RuntimeError):
    """The output was begun by the other executor: neither knows which rows the other wrote."""


@contextlib.contextmanager
def in_process(job: str) -> Iterator[None]:
    """While a job runs in process: the steps that would start Ray work refuse instead."""
    token = _ACTIVE.set(job)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def running_in_process() -> bool:
    return _ACTIVE.get() is not None


def refuse_in_process(step: str) -> None:
    """Raise :class:`NeedsRay` when a job running in process reaches a Ray-only ``step``."""
    job = _ACTIVE.get()
    if job is not None:
        raise NeedsRay(f"job {job!r} {step}, which runs on Ray Data; run it without --in-process "
                       "(ray.in_process: false)")


def refuse_in_process_output(output: str) -> None:
    """For the Ray executor: an output this executor began is not continued on Ray (Ray Data's
    checkpoint does not know its rows, so every one of them would be written again)."""
    if any(r["base"].startswith(BASE_PREFIX) for r in read_counts(output)):
        raise ExecutorConflict(f"{output} was begun in process; resume it with --in-process, "
                               "or start again with --overwrite")


def source_files(source: Source) -> list[str]:
    """The Parquet files of a source, in the order every run reads them."""
    paths = [source.paths] if isinstance(source.paths, str) else list(source.paths)
    files: list[str] = []
    for path in paths:
        files += storage.listdir(path, ".parquet") or [path]
    return files


def write_prepared(prep: Prepared, url: str) -> None:
    """A prepared input in this process: the whole source, its steps in order, one file under
    ``url`` (none when no row is left, as Ray Data writes none)."""
    parts = [_read_source(f, prep.source) for f in source_files(prep.source)]
    table = _concat(parts) if parts else pa.table({})
    for step in prep.steps:
        if table.num_rows == 0:
            break
        table = _apply(step, table)
    storage.makedirs(url)
    if table.num_rows:
        storage.write_parquet(storage.join(url, "part-00000.parquet"), table)


def _apply(step: MapBatches | MapGroups | SortLimit, table: pa.Table) -> pa.Table:
    if isinstance(step, SortLimit):
        return table.sort_by(step.key).slice(0, step.n)
    if isinstance(step, MapGroups):  # a stable sort: each group's rows in source order
        table = table.sort_by(step.key)
        keys = table[step.key].to_pylist()
        starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]] + [len(keys)]
        return _concat([step.fn(table.slice(a, b - a), *step.args) for a, b in zip(starts, starts[1:])])
    size = step.batch_size or table.num_rows
    batches = [table.slice(start, size) for start in range(0, table.num_rows, size)]
    if isinstance(step.fn, type):  # built once, as one actor
        built = step.fn(*step.args)
        return _concat([built(b) for b in batches])
    return _concat([step.fn(b, *step.args, **step.kwargs) for b in batches])


def _concat(tables: list[pa.Table]) -> pa.Table:
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")


def run_pass_in_process(p: Pass, output: str, budget: ErrorBudget | None = None) -> PassResult:
    """Run (or resume) a pass into ``output`` in this process; no Ray is started."""
    t0 = time.perf_counter()
    committed = {r["base"] for r in read_counts(output)}
    if storage.exists(storage.join(output, CHECKPOINT_DIR)) or any(not b.startswith(BASE_PREFIX) for b in committed):
        raise ExecutorConflict(f"{output} was begun on Ray; resume it there (without --in-process), "
                               "or start again with --overwrite")
    _remove_uncommitted(output, committed)
    budgets = {s.name: replace(budget or ErrorBudget()) for s in p.stages}
    seconds = {s.name: 0.0 for s in p.stages}
    for stage in p.stages:
        stage.setup()
    first_batch = p.stages[0].resources.batch_size if p.stages else None
    for file_index, url in enumerate(source_files(p.source)):
        table = _read_source(url, p.source)
        size = first_batch or max(table.num_rows, 1)
        for batch_index, start in enumerate(range(0, table.num_rows, size)):
            base = f"{BASE_PREFIX}{file_index:05d}-{batch_index:05d}"
            if base in committed:
                continue
            batch = table.slice(start, size)
            for stage in p.stages:
                t = time.perf_counter()
                batch = _through(stage, batch, p.id_column, budgets[stage.name])
                seconds[stage.name] += time.perf_counter() - t
            p.sink.write(batch, output, base, {"executor": "in_process"})
    for stage in p.stages:
        _show(stage.name, budgets[stage.name], time.perf_counter() - t0)
    ones = {s.name: 1 for s in p.stages}
    return PassResult(read_counts(output), dict(ones), seconds, time.perf_counter() - t0, dict(ones))


def _through(stage: Stage, batch: pa.Table, id_column: str, budget: ErrorBudget) -> pa.Table:
    """``batch`` through one stage in calls of the stage's batch size, each guarded, the budget kept."""
    size = stage.resources.batch_size or max(batch.num_rows, 1)
    parts = []
    for start in range(0, batch.num_rows, size):
        part = batch.slice(start, size)
        rows = int(pending(part).sum())
        result = call_guarded(stage, part, id_column)
        budget.add(rows, result.errors, result.first_error)
        if budget.exceeded():
            raise StageFailing(budget.message(stage.name))
        parts.append(result.table)
    if not parts:
        return batch
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def _read_source(url: str, source: Source) -> pa.Table:
    """One file of a source: its columns, its ``where`` applied."""
    fs, path = storage.arrow_filesystem(url)
    table = pq.read_table(path, filesystem=fs, columns=source.columns)
    return source.where(table) if source.where is not None else table


def _remove_uncommitted(output: str, committed: set[str]) -> None:
    """The files of batches a killed run wrote without their counts record (``<base>.*``)."""
    for folder in storage.listdirs(output):  # the tables' folders (not _work, _counts, ...)
        for url in storage.listdir(folder) + storage.listdirs(folder):
            name = storage.basename(url)
            if name.startswith(BASE_PREFIX) and name.split(".", 1)[0] not in committed:
                storage.remove(url, recursive=True)


def _show(stage: str, budget: ErrorBudget, elapsed: float) -> None:
    from egoray.console import progress

    text = f"{budget.rows} rows, {budget.rows / max(elapsed, 1e-9):.1f} rows/s" + \
        (f", {budget.errors} stage errors" if budget.errors else "") + f" in {elapsed:.0f} s"
    progress(stage, text, final=True)
