"""Which training rows each worker takes, in which order: a seeded global permutation per epoch.

Ray Data hands a reader its blocks in the order they finish and splits a stream between workers
by who asks first, so a shuffle buffer over a worker's stream trains on a different sequence in
every run, and a buffer of a few batches over pairs built video by video fills each batch with one
video's consecutive narrations (near-duplicates, false negatives). Here every epoch is one
permutation of all training rows, drawn from (seed, epoch, stream) over the rows' ids sorted —
so it depends on neither block arrival nor the number of workers — and dealt round-robin: rank
``r`` of ``w`` trains on positions ``r, r + w, r + 2w, …``. With ``w`` workers of batch ``b``,
step ``k`` trains on the same rows as one worker of batch ``w·b`` would (as torch's
``DistributedSampler(shuffle=True)`` does with a seeded generator).

A worker reads the whole stream each epoch and keeps its own share, in order, in memory (about
1/w of the training rows; the measurement is in ``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray.data.seeds import row_seed

ID = "id"


class EpochOrder:
    """The permutation of a set of rows (by id) for any epoch, and each rank's share of it."""

    def __init__(self, ids: Iterable[str], seed: int, stream: str = "train") -> None:
        self.ids = np.sort(np.asarray([str(i) for i in ids], dtype=object))
        repeated = self.ids[1:][self.ids[1:] == self.ids[:-1]]
        if len(repeated):
            raise ValueError(f"{len(repeated)} {stream} rows share an id with another (e.g. {repeated[0]!r}): "
                             "a seeded order needs one id per row")
        self.seed, self.stream = seed, stream

    def __len__(self) -> int:
        return len(self.ids)

    def permutation(self, epoch: int, cycle: int = 0) -> np.ndarray:
        """Every id, in the order of ``epoch`` (``cycle``: a further pass within it, for aux rows)."""
        rng = np.random.default_rng(row_seed(self.seed, self.stream, epoch, cycle))
        return self.ids[rng.permutation(len(self.ids))]

    def share(self, epoch: int, rank: int, world: int, cycle: int = 0) -> np.ndarray:
        """The ids ``rank`` trains on, in order: every ``world``-th of the permutation, as many per rank."""
        per_rank = len(self.ids) // world
        return self.permutation(epoch, cycle)[rank::world][:per_rank]


def ids_of(batches: Iterable[pa.Table]) -> list[str]:
    """The ``id`` column of a stream of Arrow batches."""
    out: list[str] = []
    for b in batches:
        out += [str(x) for x in b[ID].to_pylist()]
    return out


def pick(batches: Iterable[pa.Table], ids: np.ndarray) -> pa.Table:
    """The rows of ``ids`` out of a stream of Arrow batches, in the order of ``ids``; every id
    must be found once (the stream holds the same rows in every epoch)."""
    wanted = pa.array([str(i) for i in ids], pa.string())
    kept: list[pa.Table] = []
    for b in batches:
        where = pc.index_in(pc.cast(b[ID], pa.string()), value_set=wanted)
        found = pc.is_valid(where)
        if pc.any(found).as_py():
            kept.append(b.filter(found).append_column("_order", pc.filter(where, found)))
    if not kept:
        if len(wanted):
            raise RuntimeError(f"none of the {len(wanted)} rows of this worker's share were in the stream")
        return pa.table({ID: pa.array([], pa.string())})
    table = pa.concat_tables(kept, promote_options="permissive")
    if table.num_rows != len(wanted):
        raise RuntimeError(f"the stream held {table.num_rows} of this worker's {len(wanted)} rows: "
                           "its rows changed between reads")
    return table.take(pc.sort_indices(table["_order"])).drop_columns(["_order"])


def by_id(batches: Iterable[pa.Table]) -> pa.Table | None:
    """A whole (held-out) stream in id order, whatever order its blocks arrived in; None if empty."""
    parts = [b for b in batches if b.num_rows]
    if not parts:
        return None
    table = pa.concat_tables(parts, promote_options="permissive")
    return table.take(pc.sort_indices(pc.cast(table[ID], pa.string())))


def in_id_order(blocks: Iterable[pa.Table], batch: int, batch_format: str = "numpy") -> Iterator[Any]:
    """A whole stream's batches of ``batch`` rows in id order (the last one short)."""
    return as_format(slices(by_id(blocks), batch, drop_last=False), batch_format)


def slices(table: pa.Table | None, batch: int, drop_last: bool = True) -> Iterator[pa.Table]:
    """Consecutive batches of ``batch`` rows (the last, short one only without ``drop_last``)."""
    if table is None:
        return
    stop = table.num_rows - table.num_rows % batch if drop_last else table.num_rows
    for start in range(0, stop, batch):
        yield table.slice(start, batch)


def as_format(batches: Iterable[pa.Table], batch_format: str) -> Iterator[Any]:
    """Batches as Ray Data's ``iter_batches`` would give them (``numpy``: a dict of arrays)."""
    from ray.data.block import BlockAccessor

    for b in batches:
        yield b if batch_format == "pyarrow" else BlockAccessor.for_block(b).to_batch_format(batch_format)
