"""What one run of a pass on Ray reports while it runs: the statistics actor the stage actors
report to (model loads, actors that started, stage time, the error budget across actors) and the
console's live line per stage that reads it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from egoray.stages.guard import ErrorBudget


class PassStats:
    """One run of a pass, as the stage actors report it: the actors that started and their model
    loads, stage time, and the rows each stage raised on (the error budget, across all actors)."""

    def __init__(self, budget: ErrorBudget | None = None) -> None:
        self.loads: dict[str, int] = {}
        self.actors: dict[str, set[str]] = {}
        self.seconds: dict[str, float] = {}
        self.template = budget or ErrorBudget()
        self.budgets: dict[str, ErrorBudget] = {}

    def loaded(self, stage: str, actor: str = "") -> None:
        self.loads[stage] = self.loads.get(stage, 0) + 1
        self.actors.setdefault(stage, set()).add(actor)

    def worked(self, stage: str, seconds: float) -> None:
        """Stage time, reported every few seconds by each actor (the last seconds may be missing)."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def took(self, stage: str, rows: int, errors: int, first_error: str | None = None) -> str | None:
        """Rows a stage took and how many raised; the message to stop with once over budget."""
        budget = self.budgets.setdefault(stage, replace(self.template))
        budget.add(rows, errors, first_error)
        return budget.message(stage) if budget.exceeded() else None

    def get(self) -> tuple[dict[str, int], dict[str, float], dict[str, int]]:
        return self.loads, self.seconds, {k: len(v) for k, v in self.actors.items()}

    def progress(self) -> dict[str, tuple[int, int]]:
        """Rows each stage took so far this run, and the rows it raised on."""
        return {stage: (b.rows, b.errors) for stage, b in self.budgets.items()}


class ProgressLine(threading.Thread):
    """The console's live line per stage while a pass runs: rows done, rows/s, stage errors
    (from the pass statistics actor, once a second; the rejects of filters are in the summary)."""

    def __init__(self, stats: Any, stages: Sequence[str]) -> None:
        super().__init__(daemon=True, name="egoray-progress")
        self.stats, self.stages = stats, list(stages)
        self.done = threading.Event()
        self.t0 = time.monotonic()
        self.last: dict[str, tuple[int, int]] = {}

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.show(final=False)

    def show(self, final: bool) -> None:
        import ray

        from egoray.console import progress

        with contextlib.suppress(Exception):
            self.last = ray.get(self.stats.progress.remote(), timeout=10)
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        for stage in self.stages:
            rows, errors = self.last.get(stage, (0, 0))
            if not rows and not final:
                continue
            text = f"{rows} rows, {rows / elapsed:.1f} rows/s" + (f", {errors} stage errors" if errors else "")
            progress(stage, text + (f" in {elapsed:.0f} s" if final else ""), final=final)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=15)
        self.show(final=True)
