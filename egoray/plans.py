"""What a streaming job declares: a :class:`StreamingPlan` — its :class:`Pass` (source, stages,
sink), the inputs it derives first (:class:`Prepared`, named by the pass's source), the URLs
whose change refuses a resume and the exports written after — and what running a pass gives
back (:class:`PassResult`). Either executor runs a plan: :mod:`egoray.executor` on Ray Data,
:mod:`egoray.inprocess` in this process. A plan is built before anything runs (it checks the
inputs, it writes nothing), so ``egoray run --plan`` can print it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from egoray.stages.base import Sink, Stage

CHECKPOINT_DIR = "_checkpoint"  # Ray Data's record of committed write tasks
WORK_DIR = "_work"  # inputs a job prepared for its pass, dropped once it is complete
DONE_FILE = "_DONE.json"


@dataclass
class Source:
    """Parquet files (or folders of them) the workers read, with the columns a job needs.

    ``paths`` may be a :class:`Prepared` input instead: it is written first, under ``_work``,
    and read from there. ``where`` keeps the rows a job works on (e.g. some splits): a Ray-free
    row filter applied in the read tasks' wake, after the checkpoint filter.
    """

    paths: str | list[str] | Prepared
    columns: list[str] | None = None
    where: Callable[[pa.Table], pa.Table] | None = None


@dataclass
class Pass:
    """One streaming pass: what to read, which stages, which sink, keyed by ``id_column``."""

    name: str
    source: Source
    stages: Sequence[Stage]
    sink: Sink
    id_column: str
    rows_per_file: int = 10_000


@dataclass
class MapBatches:
    """``fn(batch, *args, **kwargs)`` over batches of ``batch_size`` rows (``None``: as the reader
    cuts them — the function must not depend on where). A class is built once per worker from
    ``args`` and called on batches, in a pool of ``actors`` (it loads something once)."""

    fn: Callable[..., pa.Table] | type
    batch_size: int | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    actors: int = 1


@dataclass
class MapGroups:
    """``fn(group, *args)`` once per value of ``key``, with every row holding it."""

    key: str
    fn: Callable[..., pa.Table]
    args: tuple[Any, ...] = ()


@dataclass
class SortLimit:
    """The first ``n`` rows by ``key``: the same ``n`` in every run, whatever the batches."""

    key: str
    n: int


@dataclass
class Listed:
    """Rows the driver builds when the plan runs, after the output is claimed: a folder's file
    names, a label list's prompts. Small by nature (a row per file or class), so no workers."""

    rows: Callable[[], pa.Table]
    what: str  # for the plan's description, e.g. "the video files of s3://b/videos"


@dataclass
class Prepared:
    """An input a pass needs the whole source for first (grouping by video, cutting windows, a
    deterministic limit): ``source`` through ``steps``, written once to ``OUTPUT/_work/<name>``.

    ``empty``: the message of the input error when no row is left (a pass over nothing would
    only write an empty output)."""

    name: str
    source: Source | Listed
    steps: Sequence[MapBatches | MapGroups | SortLimit] = ()
    empty: str | None = None


@dataclass
class StreamingPlan:
    """A streaming job, declared: the pass, the URLs whose change refuses a resume, and
    ``finish(output)``, which writes the job's exports from the committed tables and returns the
    extra fields of its ``run.json``."""

    work: Pass
    inputs: list[str]
    finish: Callable[[str], dict[str, Any]] | None = None

    def describe(self) -> list[str]:
        """The plan in lines a person reads: what is read, prepared, run and written."""
        p = self.work
        lines = [f"job pass {p.name!r}, keyed by {p.id_column}, {p.rows_per_file} rows per committed file"]
        src = p.source.paths
        if isinstance(src, Prepared):
            origin = src.source.what if isinstance(src.source, Listed) else _paths(src.source)
            lines.append(f"prepare _work/{src.name} from {origin}")
            lines += [f"  then {_step(s)}" for s in src.steps]
        else:
            lines.append(f"read {_paths(p.source)}")
        if p.source.columns:
            lines.append(f"  columns {', '.join(p.source.columns)}")
        for stage in p.stages:
            r = stage.resources
            lines.append(f"stage {stage.name}: {type(stage).__name__}, {r.actors} actor(s) × {r.cpus:g} CPU"
                         f"{f' + {r.gpus:g} GPU' if r.gpus else ''}, "
                         f"{f'batches of {r.batch_size}' if r.batch_size else 'whole blocks'}")
        lines.append(f"sink {type(p.sink).__name__} (tables it always writes: "
                     f"{', '.join(sorted(p.sink.empty_tables()))})")
        if self.inputs:
            lines.append(f"resume refused if changed: {len(self.inputs)} input(s), e.g. {self.inputs[0]}")
        return lines


def _paths(source: Source) -> str:
    paths = source.paths if isinstance(source.paths, list) else [source.paths]
    return ", ".join(map(str, paths[:3])) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _step(step: MapBatches | MapGroups | SortLimit) -> str:
    if isinstance(step, SortLimit):
        return f"the first {step.n} rows by {step.key}"
    name = getattr(step.fn, "__name__", type(step.fn).__name__)  # a function, a class, or a callable object
    if isinstance(step, MapGroups):
        return f"{name} per {step.key}"
    return f"{name} over batches" + (f" of {step.batch_size}" if step.batch_size else "")


@dataclass
class PassResult:
    """What a pass did in this run and, from the committed counts, in all runs together."""

    counts: list[dict[str, Any]]
    loads: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    actors: dict[str, int] = field(default_factory=dict)  # stage → actors that started in this run
