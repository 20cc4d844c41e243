"""The pairs a training job trains on: built once per video into ``OUTPUT/_work/<name>``
(:func:`build_pairs`), counted and their rejects written by the workers, and read back as the
Ray Dataset that Ray Train's workers take their shards of (:func:`pairs_dataset`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.data.raw import InputError
from egoray.errors import ray_errors
from egoray.plans import Source
from egoray.ray_data_context import read
from egoray.stages.base import REASON, STAGE, pending
from egoray.stages.pairs import PoolPairs
from egoray.train.data import PARAPHRASES
from egoray.work_inputs import prepare_dataset


def check_video_features(url: str) -> str:
    """``url``'s index, or the input error that it is not a ``video_features`` output (checked
    when a plan is built, before Ray starts, and again where the pairs are built)."""
    index = storage.join(url, "index")
    if not storage.exists(index):
        raise InputError(f"{url}: not a video_features output (no index/ table)")
    return index


def build_pairs(output: str, name: str, items: Callable[[], Any], features: str, offset: float,
                labels: str | None = None, num_frames: int | None = None) -> str:
    """``OUTPUT/_work/<name>``: the items with their pooled ``video`` (or ``frames``), built per video."""
    check_video_features(features)
    pooler = PoolPairs(features, offset, labels, num_frames)
    return prepare_dataset(output, name, lambda: items().groupby("video_uid").map_groups(pooler, batch_format="pyarrow"))


def count_pairs(url: str) -> dict[str, Any]:
    """Pairs per split, rejects per reason and the vectors' widths, counted by the workers (one
    small record per block reaches the driver: numbers, not pairs)."""
    import json

    from egoray.ray_data_context import data_context

    def count(batch: pa.Table) -> pa.Table:
        ok = pending(batch)
        split = batch["split"].to_pylist() if "split" in batch.column_names else [None] * batch.num_rows
        reason = batch[REASON].to_pylist() if REASON in batch.column_names else [None] * batch.num_rows
        counts: dict[str, int] = {}
        for s, r, good in zip(split, reason, ok, strict=True):
            key = f"split:{s}" if good else f"reject:{r}"
            counts[key] = counts.get(key, 0) + 1
        for name in ("video", "embedding"):  # vector widths, from the first usable row
            if name in batch.column_names and ok.any():
                counts[f"dim:{name}:{len(batch[name][int(ok.argmax())].as_py())}"] = 1
        if PARAPHRASES in batch.column_names:  # usable pairs with paraphrases to draw from
            lengths = pc.fill_null(pc.list_value_length(batch[PARAPHRASES]), 0).to_numpy(zero_copy_only=False)
            counts["with:paraphrases"] = int(((lengths > 0) & ok).sum())
        return pa.table({"counts": [json.dumps(counts)]})

    if not storage.listdir(url, ".parquet"):
        return {"total": 0, "dims": {}, "splits": {}, "rejected": {}, "with": {}}
    names = storage.parquet_schema(url).names
    with ray_errors(), data_context(None):
        wanted = ("split", REASON, "video", "embedding", PARAPHRASES)
        records = read(Source(url, columns=[c for c in wanted if c in names])) \
            .map_batches(count, batch_format="pyarrow", batch_size=None).take_all()
    counts: dict[str, int] = {}
    for record in records:
        for key, n in json.loads(record["counts"]).items():
            counts[key] = n if key.startswith("dim:") else counts.get(key, 0) + n
    dims = {k.split(":")[1]: int(k.split(":")[2]) for k in counts if k.startswith("dim:")}
    having = {k[len("with:"):]: v for k, v in counts.items() if k.startswith("with:")}
    counts = {k: v for k, v in counts.items() if not k.startswith(("dim:", "with:"))}
    return {"total": sum(counts.values()), "dims": dims, "with": having,
            "splits": {k[len("split:"):]: v for k, v in counts.items() if k.startswith("split:")},
            "rejected": {k[len("reject:"):]: v for k, v in counts.items() if k.startswith("reject:")}}


def write_rejects(url: str, output: str) -> None:
    """The pairs' rejects into ``OUTPUT/rejects/`` (written by the workers)."""
    from egoray.data.schema import reject_table
    from egoray.ray_data_context import data_context

    def rejects(batch: pa.Table) -> pa.Table:
        rows = batch.filter(pc.invert(pa.array(pending(batch))))
        return reject_table(rows["id"], rows[STAGE], rows[REASON], rows["_reject_detail"])

    target = storage.join(output, "rejects")
    storage.remove(target, recursive=True)
    if not storage.listdir(url, ".parquet"):
        return
    fs, path = storage.arrow_filesystem(target)
    with ray_errors(), data_context(None):
        read(Source(url, columns=["id", STAGE, REASON, "_reject_detail"])).map_batches(
            rejects, batch_format="pyarrow").write_parquet(path, filesystem=fs, min_rows_per_file=100_000)


class KeepSplits:
    """Usable pairs of some splits (a picklable batch function)."""

    def __init__(self, splits: list[str], columns: list[str], flags: dict[str, bool] | None = None) -> None:
        self.splits, self.columns, self.flags = pa.array(splits, pa.string()), columns, flags or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        keep = pa.array(pending(batch))
        if len(self.splits) and "split" in batch.column_names:
            keep = pc.and_(keep, pc.fill_null(pc.is_in(batch["split"], value_set=self.splits), False))
        out = batch.filter(keep).select([c for c in self.columns if c in batch.column_names])
        for name, value in self.flags.items():
            out = out.append_column(name, pa.array([value] * out.num_rows, pa.bool_()))
        return out


CACHE_BYTES = 256 * 2**20


def pairs_dataset(url: str, splits: list[str], columns: list[str], flags: dict[str, bool] | None = None) -> Any:
    """The usable pairs of ``splits`` (all of them: ``[]``) as a Ray Dataset for Ray Train's
    ``datasets=``: streamed from the Parquet files every epoch, or — when the pairs' files hold
    less than ``CACHE_BYTES`` — read once into the object store (the cluster's memory, not the
    driver's), which spares small runs a dataset execution per epoch. ``flags``: boolean columns
    with one value for every pair (``human``: whether the texts are people's narrations)."""
    from egoray.ray_data_context import data_context, io_cpus

    # Ray Train's workers hold their CPUs for the whole run: the feeding tasks ask for no more
    # than reads do, or they would wait for them forever on a machine the workers fill. The
    # dataset keeps the context it is made in (V1 reads, whose tasks take that request).
    with data_context(None) as ctx:
        saved, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # once per epoch per worker: noise
        try:
            ds = read(Source(url)).map_batches(KeepSplits(splits, columns, flags), batch_format="pyarrow",
                                               num_cpus=io_cpus())
            return ds.materialize() if _size(url) < CACHE_BYTES else ds
        finally:
            ctx.enable_progress_bars = saved


def _size(urls: str | list[str]) -> int:
    """Bytes of the Parquet files under ``urls`` (a listing: no file is read)."""
    total = 0
    for url in [urls] if isinstance(urls, str) else urls:
        fs, path = storage.filesystem(url)
        total += sum(int(e.get("size") or 0) for e in fs.ls(path, detail=True) if str(e["name"]).endswith(".parquet"))
    return total
