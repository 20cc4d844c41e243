"""Poison batches without Ray: retried, split down to single rows, the raising rows rejected."""

from __future__ import annotations

import pyarrow as pa
import pytest

from egoray.data.raw import InputError
from egoray.stages.base import REASON, STAGE, Resources, Stage, mark
from egoray.stages.guard import STAGE_ERROR, ErrorBudget, StageFailing, call_guarded


class Upper(Stage):
    name = "upper"

    def __init__(self, bad=(), fail_first: int = 0, error: type[Exception] = ValueError) -> None:
        super().__init__(Resources())
        self.bad, self.fail_first, self.error, self.calls = set(bad), fail_first, error, []

    def process(self, rows: pa.Table) -> pa.Table:
        ids = rows["id"].to_pylist()
        self.calls.append(ids)
        if len(self.calls) <= self.fail_first or self.bad & set(ids):
            raise self.error(f"cannot take {sorted(self.bad & set(ids))}")
        return rows.append_column("upper", pa.array([t.upper() for t in rows["text"].to_pylist()]))


def _batch(n: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)]})


def test_rows_that_raise_are_rejected_and_the_others_are_processed_in_order():
    stage = Upper(bad={"r3", "r11"})
    result = call_guarded(stage, _batch(16), "id")
    out = result.table
    assert out["id"].to_pylist() == [f"r{i}" for i in range(16)]
    rejected = [i for i, r in zip(out["id"].to_pylist(), out[REASON].to_pylist(), strict=True) if r]
    assert rejected == ["r3", "r11"] and result.errors == 2
    assert set(out[STAGE].drop_null().to_pylist()) == {"upper"}
    assert set(out[REASON].drop_null().to_pylist()) == {STAGE_ERROR}
    detail = out["_reject_detail"][3].as_py()
    assert detail.startswith("ValueError: cannot take ['r3']") and "in process" in detail  # type, message, frames
    good = [u for u, r in zip(out["upper"].to_pylist(), out[REASON].to_pylist(), strict=True) if r is None]
    assert good == [f"TEXT {i}" for i in range(16) if i not in (3, 11)]
    assert out["upper"][3].as_py() is None
    assert result.first_error == "row 'r3': ValueError: cannot take ['r3']"
    # tried whole twice, then halves: only the halves holding a bad row are split again
    assert stage.calls[:2] == [_batch(16)["id"].to_pylist()] * 2
    assert len(stage.calls) == 2 + 14 and ["r3"] in stage.calls and ["r11"] in stage.calls
    assert ["r4", "r5", "r6", "r7"] in stage.calls and ["r4"] not in stage.calls


def test_a_transient_failure_is_retried_whole():
    stage = Upper(fail_first=1)
    result = call_guarded(stage, _batch(4), "id")
    assert result.errors == 0 and len(stage.calls) == 2
    assert result.table[REASON].null_count == 4


def test_rows_rejected_earlier_pass_through_untouched():
    batch = mark(_batch(4), [False, True, False, False], "read", "bad_input")
    result = call_guarded(Upper(bad={"r2"}), batch, "id")
    reasons = result.table[REASON].to_pylist()
    assert reasons == [None, "bad_input", STAGE_ERROR, None] and result.errors == 1


def test_errors_about_the_job_are_not_retried_or_split():
    stage = Upper(bad={"r0"}, error=InputError)
    with pytest.raises(InputError):
        call_guarded(stage, _batch(8), "id")
    assert len(stage.calls) == 1


def test_a_budget_check_may_stop_the_splitting():
    def stop(summary: str) -> None:
        raise StageFailing(summary)

    stage = Upper(bad={f"r{i}" for i in range(8)})
    with pytest.raises(StageFailing, match="row 'r0'"):
        call_guarded(stage, _batch(8), "id", stop)
    assert ["r1"] not in stage.calls


@pytest.mark.parametrize(("rows", "errors", "stop"), [
    (7, 7, False),     # fewer than the first 8 rows: not judged yet
    (8, 8, True),      # the first 8 rows all failed
    (99, 5, False),    # under 100 rows only "all failed" counts
    (100, 1, False),   # exactly 1%
    (100, 2, True),    # over 1%
    (1000, 10, False),
    (1000, 11, True),
])
def test_error_budget(rows, errors, stop):
    budget = ErrorBudget()
    budget.add(rows, errors, "row 'x': ValueError: no")
    assert budget.exceeded() is stop
    assert "'upper'" in budget.message("upper") and f"{errors} of {rows}" in budget.message("upper")
