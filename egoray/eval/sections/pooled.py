"""What a section pools: the declaration the eval job builds (:class:`Pooled`), the readers of
the files it names, and the pooled table read back by ``compute``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError
from egoray.eval.sections.common import reject


@dataclass(frozen=True)
class Pooled:
    """What a section's pooled table is made of. The eval job builds it with Ray Data, per video
    (:func:`egoray.train.pairs.build_pairs`: each item's window pooled from ``video_features``),
    into ``_work/<section>``, and hands its URL to ``compute``.

    The items come from one of: ``table`` (a Parquet file or folder), ``benchmark`` (a function a
    worker calls to read a benchmark's own file into a table), ``text_features`` (the rows of a
    text_features output in some splits, with their embeddings)."""

    video_features: str
    table: str | None = None
    benchmark: Callable[[], pa.Table] | None = None
    text_features: tuple[str, list[str]] | None = None
    require: tuple[str, ...] = ()  # columns the table must have (read with ``optional``; none: all)
    optional: tuple[str, ...] = ()  # read as well where the table has them
    per_batch: Callable[[pa.Table], pa.Table] | None = None  # picklable, applied to every batch
    videos: list[str] | None = None  # only these videos' items
    offset: float = 0.0  # each window widened by this many seconds
    labels: str | None = None  # verb and noun of items without them


def read_input(url: str) -> bytes:
    """An input file's bytes; a missing or unreadable one is an input error naming it."""
    try:
        return storage.read_bytes(url)
    except storage.StorageError as e:
        raise InputError(f"cannot read {url}: {e}") from None


def no_items(table: pa.Table, source: str, what: str) -> pa.Table:
    if table.num_rows == 0:
        raise InputError(f"{source}: no {what} items")
    return table


def read_pooled(url: str, columns: list[str]) -> tuple[pa.Table, list[dict[str, Any]], int]:
    """The usable rows of a pooled table (built per video by the eval job), the rejects, all rows."""
    from egoray.stages.base import DETAIL, REASON, STAGE, pending

    files = storage.listdir(url, ".parquet")
    if not files:
        return pa.table({c: [] for c in columns}), [], 0
    table = storage.read_parquet(url)
    ok = pending(table)
    bad = table.filter(pa.array(~ok))
    rejects = [reject(r["id"], r[STAGE] or "pairs", r[REASON], r[DETAIL] or "")
               for r in bad.select(["id", STAGE, REASON, DETAIL]).to_pylist()]
    return table.filter(pa.array(ok)).select([c for c in columns if c in table.column_names]), rejects, table.num_rows
