"""How egoray drives Ray Data in every pass (streaming, prepare, training inputs, eval): the
data context a pass runs in, the CPUs its read and write tasks ask for, and the Parquet read
that every pass starts from."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from egoray import storage
from egoray.plans import Source
from egoray.settings import cluster_address


def io_cpus() -> float:
    """CPUs each read/write task asks for.

    On egoray's own local Ray, none: reads and writes are short I/O, and an actor pool sized to
    the machine would otherwise leave them no CPU at all (the pass would wait forever). On a
    cluster, a quarter: that keeps them off a head node declared with ``CPU: 0``.
    """
    if cluster_address():
        return float(os.environ.get("EGORAY_IO_CPUS", "0.25"))
    return float(os.environ.get("EGORAY_IO_CPUS", "0"))


@contextlib.contextmanager
def data_context(checkpoint: Any = None) -> Iterator[Any]:
    """The Ray Data context of one pass (restored afterwards): V1 Parquet reads (their tasks
    take our CPU request), our checkpoint config, the sort shuffle, a stage's own
    exception rather than Ray Data's ``UserCodeException`` (which loses its cause on the way to
    the driver), Ray Data's INFO lines kept out of the way."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.use_datasource_v2, ctx.checkpoint_config, ctx.print_on_execution_start, ctx.shuffle_strategy,
             ctx.raise_original_map_exception)
    ctx.use_datasource_v2 = False
    ctx.raise_original_map_exception = True  # our errors reach the driver as themselves (see errors.ray_errors)
    ctx.checkpoint_config = checkpoint
    ctx.print_on_execution_start = False
    # egoray shuffles only metadata (narrations, clip lists) in its preparation passes; the
    # pull-based sort shuffle's tasks group that in seconds, locally and on a cluster, where the
    # default hash shuffle first starts an aggregator actor per partition (200): 25 s on a laptop,
    # and on an autoscaling cluster 200 resource requests for a few megabytes.
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        with quiet_ray_data_logs():
            yield ctx
    finally:
        (ctx.use_datasource_v2, ctx.checkpoint_config, ctx.print_on_execution_start,
         ctx.shuffle_strategy, ctx.raise_original_map_exception) = saved


RAY_DATA_CHATTER = ("ray.data", "ray.data._internal.execution.streaming_executor", "ray.data.dataset",
                    "ray.data.checkpoint.checkpoint_filter", "ray.data._internal.planner")


@contextlib.contextmanager
def quiet_ray_data_logs() -> Iterator[None]:
    """During a pass, Ray Data's INFO lines (plans, checkpoint loading) are not shown; its progress
    stays visible. The loggers' levels are restored afterwards: they are the process's, not ours."""
    levels = {name: logging.getLogger(name).level for name in (*RAY_DATA_CHATTER, "ray.data._internal.progress")}
    for name in RAY_DATA_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def parquet_extent(urls: list[str]) -> tuple[int, int]:
    """(files, about how many rows) of the Parquet files at ``urls`` (folders or files): all
    files' bytes from a listing times the first file's rows per byte from its footer — no rows
    are read, and one footer however many files there are."""
    sized: list[tuple[str, int]] = []
    for url in urls:
        fs, path = storage.filesystem(url)
        if storage.call(url, fs.isdir, path):
            entries = storage.call(url, fs.ls, path, detail=True)
            sized += sorted((storage.join(url, storage.basename(e["name"])), int(e.get("size") or 0)) for e in entries
                            if e.get("type") == "file" and e["name"].endswith(".parquet")
                            and not storage.basename(e["name"]).startswith((".", "_")))
        else:
            sized.append((url, int(storage.call(url, fs.size, path) or 0)))
    if not sized:
        return 0, 0
    first, first_bytes = sized[0]
    fs, path = storage.filesystem(first)
    with storage.call(first, fs.open, path, "rb") as f:
        first_rows = pq.ParquetFile(f).metadata.num_rows
    total = sum(size for _, size in sized)
    return len(sized), first_rows if total <= first_bytes else round(first_rows * total / max(first_bytes, 1))


# Rows of a read block at most. A stage actor holds its block and what it makes of it (a
# text_features actor peaked at 3.4 GB on blocks of 250,000 narrations, 1.1–1.5 GB on 31,000:
# benchmarks/README.md, scale), so blocks are cut by rows, not only by file.
MAX_BLOCK_ROWS = 32_768


def read_blocks(files: int, rows: int, at_least: int | None = None) -> int:
    """How many blocks a read makes: one per file at least, ``at_least`` (so that a small input
    still reaches every actor of a pool: one block goes to one actor), and no more than
    :data:`MAX_BLOCK_ROWS` rows in a block."""
    return max(files, at_least or 1, math.ceil(rows / MAX_BLOCK_ROWS))


def read(source: Source, blocks: int | None = None) -> Any:
    """A Ray Dataset over the source's Parquet files, read by worker tasks, in
    :func:`read_blocks` blocks (the read tasks split a file's rows where it has more)."""
    import ray.data

    paths = [source.paths] if isinstance(source.paths, str) else list(source.paths)
    fs, _ = storage.arrow_filesystem(paths[0])
    files, rows = parquet_extent(paths)
    ds = ray.data.read_parquet([storage.arrow_filesystem(p)[1] for p in paths], filesystem=fs,
                               columns=source.columns, num_cpus=io_cpus(),
                               override_num_blocks=read_blocks(files or len(paths), rows, blocks))
    if source.where is not None:
        ds = ds.map_batches(source.where, batch_format="pyarrow", batch_size=None, num_cpus=io_cpus())
    return ds
