"""A streaming job whose stage raises on chosen rows, run by the real runner (``run_plan``).

``python -m tests.poison run CONFIG.yaml`` is ``egoray run`` with this job known (the tests kill it
mid-run).
The stage upper-cases a text column and raises ``ValueError`` on the ids in ``bad`` (on every
row with ``always``); the sink writes ``upper/<base>.parquet``. With ``hang_after`` the stage
blocks for good once it took that many batches (a job to kill mid-run, however fast the machine).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Literal

import pyarrow as pa

from egoray.config import StreamingJobConfig
from egoray.plans import Pass, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.base import Resources, Sink, Stage, write_part


class Config(StreamingJobConfig):
    job: Literal["poison"] = "poison"
    bad: list[str] = []
    always: bool = False
    batch_size: int = 8
    num_actors: int = 2
    hang_after: int | None = None

    resumable_changes = {"hang_after": True}  # the run after a kill does not hang


class RaisesOn(Stage):
    name = "upper"

    def __init__(self, bad: list[str], always: bool, resources: Resources, hang_after: int | None = None) -> None:
        super().__init__(resources)
        self.bad, self.always, self.hang_after, self.calls = set(bad), always, hang_after, 0

    def process(self, rows: pa.Table) -> pa.Table:
        self.calls += 1
        if self.hang_after is not None and self.calls > self.hang_after:
            threading.Event().wait()  # until the test kills the job
        ids = rows["id"].to_pylist()
        hit = [i for i in ids if i in self.bad]
        if self.always or hit:
            raise ValueError(f"cannot take {hit or ids[:1]}")
        return rows.append_column("upper", pa.array([t.upper() for t in rows["text"].to_pylist()]))


class UpperSink(Sink):
    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        write_part(output, "upper", base, rows.select(["id", "upper"]))
        return {}


def plan(config: Config) -> StreamingPlan:
    resources = Resources(cpus=0.5, actors=config.num_actors, batch_size=config.batch_size)
    work = Pass("poison", Source(config.input, columns=["id", "text"]),
                [RaisesOn(config.bad, config.always, resources, config.hang_after)],
                UpperSink(id_column="id", stages=["upper"], input_columns=["id", "text"]), "id",
                rows_per_file=config.batch_size)
    return StreamingPlan(work, [config.input])


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    return run_plan(config, overwrite, plan(config))


def main(argv: list[str]) -> int:
    """``egoray`` with this job registered: ``python -m tests.poison run CONFIG.yaml``."""
    from egoray import pipelines
    from egoray.cli import main as egoray

    pipelines.JOBS["poison"] = "tests.poison"
    return egoray(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
