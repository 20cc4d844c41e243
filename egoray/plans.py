"""What a streaming job declares: a :class:`Pass` (its source, stages and sink), the inputs it
derives first (:class:`Prepared`), and what running a pass gives back (:class:`PassResult`).
Either executor runs both: :mod:`egoray.executor` on Ray Data, :mod:`egoray.inprocess` in this
process."""

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

    ``where`` keeps the rows a job works on (e.g. some splits): a Ray-free row filter applied in
    the read tasks' wake, after the checkpoint filter.
    """

    paths: str | list[str]
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
class Prepared:
    """An input a pass needs the whole source for first (grouping by video, cutting windows, a
    deterministic limit): ``source`` through ``steps``, written once to ``OUTPUT/_work/<name>``."""

    name: str
    source: Source
    steps: Sequence[MapBatches | MapGroups | SortLimit]


@dataclass
class PassResult:
    """What a pass did in this run and, from the committed counts, in all runs together."""

    counts: list[dict[str, Any]]
    loads: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    actors: dict[str, int] = field(default_factory=dict)  # stage → actors that started in this run
