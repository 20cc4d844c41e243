"""The seeded global order of training rows: one permutation per epoch, dealt round-robin."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from egoray.train.order import EpochOrder, as_format, by_id, ids_of, pick, slices


def _ids(n: int) -> list[str]:
    return [f"v{i % 7}_{i:04d}" for i in range(n)]


def _blocks(ids: list[str], sizes: list[int]) -> list[pa.Table]:
    """The rows of ``ids`` (with a payload derived from the id) cut into blocks of ``sizes``."""
    out, start = [], 0
    for size in sizes:
        part = ids[start:start + size]
        out.append(pa.table({"id": part, "x": [float(int(i.split("_")[1])) for i in part]}))
        start += size
    assert start == len(ids)
    return out


def test_permutation_depends_on_seed_and_epoch_only():
    ids = _ids(101)
    shuffled = list(np.random.default_rng(5).permutation(ids))
    a, b = EpochOrder(ids, seed=3), EpochOrder(shuffled, seed=3)
    assert sorted(a.permutation(1)) == sorted(ids)
    # the order the ids were read in does not matter
    assert list(a.permutation(1)) == list(b.permutation(1))
    assert list(a.permutation(1)) != list(a.permutation(2))
    assert list(a.permutation(1)) != list(EpochOrder(ids, seed=4).permutation(1))
    assert list(a.permutation(1, cycle=1)) != list(a.permutation(1))
    # a different stream (aux rows) draws its own order
    assert list(EpochOrder(ids, seed=3, stream="aux").permutation(1)) != list(a.permutation(1))


def test_shares_deal_one_global_order():
    """w workers of batch b train step k on the rows one worker of batch w·b would."""
    ids, batch = _ids(103), 5
    order = EpochOrder(ids, seed=0)
    one = order.share(2, 0, 1)
    shares = [order.share(2, r, 2) for r in range(2)]
    assert [len(s) for s in shares] == [51, 51]  # equal shares: every rank takes the same steps
    assert not set(shares[0]) & set(shares[1])
    for k in range(len(shares[0]) // batch):
        together = set(shares[0][k * batch:(k + 1) * batch]) | set(shares[1][k * batch:(k + 1) * batch])
        assert together == set(one[k * 2 * batch:(k + 1) * 2 * batch])


def test_repeated_ids_are_refused():
    with pytest.raises(ValueError, match="share an id"):
        EpochOrder(["a", "b", "a"], seed=0)


def test_pick_gives_the_same_rows_whatever_the_blocks():
    ids = _ids(60)
    order = EpochOrder(ids, seed=1)
    want = order.share(1, 1, 3)
    rng = np.random.default_rng(0)
    a = pick(_blocks(ids, [60]), want)
    for _ in range(3):  # other cuts into blocks, arriving in another order
        mixed = list(rng.permutation(ids))
        cut = sorted(rng.choice(np.arange(1, 60), 4, replace=False))
        sizes = np.diff([0, *cut, 60]).tolist()
        b = pick(list(reversed(_blocks(mixed, sizes))), want)
        assert b.equals(a)
    assert a["id"].to_pylist() == list(want)
    assert a["x"].to_pylist() == [float(int(i.split("_")[1])) for i in want]


def test_pick_says_when_the_stream_lost_rows():
    ids = _ids(20)
    with pytest.raises(RuntimeError, match="held 9 of this worker's 10 rows"):
        pick(_blocks(ids[1:], [19]), np.asarray(ids[:10], dtype=object))


def test_held_out_rows_in_id_order_and_batches_as_ray_gives_them():
    ids = _ids(23)
    mixed = list(np.random.default_rng(2).permutation(ids))
    table = by_id(_blocks(mixed, [10, 13]))
    assert table["id"].to_pylist() == sorted(ids)
    assert [t.num_rows for t in slices(table, 10)] == [10, 10]
    assert [t.num_rows for t in slices(table, 10, drop_last=False)] == [10, 10, 3]
    batch = next(as_format(slices(table, 4), "numpy"))
    assert isinstance(batch, dict) and batch["x"].dtype == np.float64 and list(batch["id"]) == sorted(ids)[:4]
    assert ids_of(_blocks(mixed, [23])) == mixed
    assert by_id([]) is None


class _Shard:
    """A Ray Train dataset shard's iter_batches over fixed Arrow blocks, counting the reads."""

    def __init__(self, blocks):
        self.blocks, self.reads = blocks, 0

    def iter_batches(self, batch_size=None, batch_format="pyarrow"):
        self.reads += 1
        return iter(self.blocks)


def test_a_small_stream_is_read_once_and_gives_the_streamed_rows():
    from egoray.train.data import OrderedShard

    blocks = [pa.table({"id": [f"r{i}" for i in range(k, k + 10)], "x": list(range(k, k + 10))}) for k in (0, 10, 20)]
    kept, streamed = _Shard(blocks), _Shard(blocks)
    small = OrderedShard(kept, seed=3, rank=1, world=2)
    large = OrderedShard(streamed, seed=3, rank=1, world=2, keep_bytes=100)  # over 100 bytes: streamed
    for epoch in (1, 2, 3):
        assert small.rows(epoch).to_pydict() == large.rows(epoch).to_pydict()
    assert kept.reads == 1 and streamed.reads == 4  # set-up, then once per epoch
    assert small.rows(1)["id"].to_pylist() != small.rows(2)["id"].to_pylist()
