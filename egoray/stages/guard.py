"""Poison batches: a stage that raises on a batch loses only the rows it cannot take.

Ray Data aborts a whole dataset when one task raises, and its own escape (``max_errored_blocks``)
drops whole blocks without a trace. :func:`call_guarded` keeps both from happening to us: a batch
whose stage raises is tried once more (a flaky device, a full GPU), then split in halves that are
tried on their own, down to single rows; a row that still raises is marked rejected with reason
``stage_error`` and the exception in its detail. The other rows go on as if nothing happened.

An :class:`ErrorBudget` tells a poisoned record from a broken stage: once too large a share of
the rows fail (or the first few all do), the job is stopped with one message that names the
stage, the exception and the first bad row (:class:`StageFailing`), instead of rejecting millions
of rows one by one.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from egoray.config import ConfigError
from egoray.data.raw import InputError
from egoray.errors import EgorayError
from egoray.stages.base import Stage, mark
from egoray.storage import StorageError

STAGE_ERROR = "stage_error"
# Errors about the job, not about a row: retrying or splitting cannot help, so they end the job.
FATAL = (ConfigError, InputError, StorageError, MemoryError)


def error_detail(exc: BaseException, frames: int = 3) -> str:
    """The exception's type, message and the last frames of its traceback (for the rejects table)."""
    tail = "".join(traceback.format_tb(exc.__traceback__)[-frames:])
    return f"{type(exc).__name__}: {exc}\n{tail}"[:2000]


class StageFailing(EgorayError, RuntimeError):
    """A stage raised on more rows than the error budget allows: the job stops (and can resume)."""

    def __str__(self) -> str:
        # one line by construction; Ray Data appends its retry advice to args[0] on the way out,
        # which is about transient errors and would only mislead here
        return str(self.args[0]).split("\n", 1)[0] if self.args else ""


@dataclass
class ErrorBudget:
    """Rows a stage took and rows it raised on; :meth:`exceeded` says when the job must stop.

    ``max_fraction`` of the rows may fail, judged once ``min_rows`` rows were seen — or at once
    when the first ``first_rows`` rows all failed (a stage that cannot work at all).
    """

    max_fraction: float = 0.01
    min_rows: int = 100
    first_rows: int = 8
    rows: int = 0
    errors: int = 0
    first_error: str | None = None

    def add(self, rows: int, errors: int, first_error: str | None = None) -> None:
        self.rows += rows
        self.errors += errors
        if self.first_error is None and first_error:
            self.first_error = first_error

    def all_failed(self) -> bool:
        """The first ``first_rows`` rows (or more) all failed: the stage cannot work at all."""
        return bool(self.errors) and self.errors == self.rows >= self.first_rows

    def exceeded(self) -> bool:
        return self.all_failed() or (self.rows >= self.min_rows and self.errors > self.max_fraction * self.rows)

    def message(self, stage: str) -> str:
        """One line: the stage, the share that failed, the first error, what to do."""
        first = " ".join((self.first_error or "").split())
        return (f"stage {stage!r} raised on {self.errors} of {self.rows} rows (the error budget is "
                f"max_error_fraction={self.max_fraction:g}); first: {first}. The job stopped: "
                "what was written is kept, and the same command resumes once the cause is fixed "
                "(per-row errors are in rejects/ with reason stage_error)")


@dataclass
class GuardedResult:
    """A batch through a guarded stage: its rows (every one of them) and the errors met."""

    table: pa.Table
    errors: int = 0
    first_error: str | None = None


def call_guarded(stage: Stage, batch: pa.Table, id_column: str,
                 on_row_error: Callable[[str], None] | None = None) -> GuardedResult:
    """``stage(batch)``, with the rows it raises on rejected as ``stage_error`` (see the module).

    ``on_row_error(summary)`` is called for each rejected row as it happens (a budget check that
    may raise :class:`StageFailing` to stop before the whole batch was split).
    """
    error: Exception | None = None
    for _ in range(2):  # once more as a whole: a transient failure is not the rows' fault
        try:
            return GuardedResult(stage(batch))
        except FATAL:
            raise
        except Exception as exc:
            error = exc
    assert error is not None
    result = GuardedResult(batch)
    if batch.num_rows > 1:
        result.table = _halves(stage, batch, id_column, result, on_row_error)
    else:
        result.table = _reject_row(stage, batch, id_column, error, result, on_row_error)
    return result


def _try(stage: Stage, batch: pa.Table, id_column: str, result: GuardedResult,
         on_row_error: Callable[[str], None] | None) -> pa.Table:
    """One try of a part of a batch; on an error its halves are tried, a single row is rejected."""
    try:
        return stage(batch)
    except FATAL:
        raise
    except Exception as exc:
        if batch.num_rows > 1:
            return _halves(stage, batch, id_column, result, on_row_error)
        return _reject_row(stage, batch, id_column, exc, result, on_row_error)


def _halves(stage: Stage, batch: pa.Table, id_column: str, result: GuardedResult,
            on_row_error: Callable[[str], None] | None) -> pa.Table:
    mid = batch.num_rows // 2
    parts = [_try(stage, batch.slice(0, mid), id_column, result, on_row_error),
             _try(stage, batch.slice(mid), id_column, result, on_row_error)]
    # a rejected row lacks the columns the stage adds: they come back null
    return pa.concat_tables(parts, promote_options="permissive")


def _reject_row(stage: Stage, row: pa.Table, id_column: str, exc: Exception, result: GuardedResult,
                on_row_error: Callable[[str], None] | None) -> pa.Table:
    row_id = row[id_column][0].as_py() if id_column in row.column_names else None
    summary = f"row {row_id!r}: {type(exc).__name__}: {exc}"[:500]
    result.errors += 1
    result.first_error = result.first_error or summary
    if on_row_error is not None:
        on_row_error(summary)
    return mark(row, [True], stage.name, STAGE_ERROR, error_detail(exc))
