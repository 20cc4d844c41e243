"""``ingest`` job: Ego4D narration.json, fho_main.json and em_train_narrations.pkl, LaViLa's metadata
pickles, EK-100 CSVs, ActivityNet Captions → narrations Parquet.

One Ray task per input file reads it and splits it into ``num_shards`` buckets by video (CRC-32 of
the video uid); one Ray task per bucket takes that bucket from every input, runs the clean-up
stages (so duplicates across input files are found too) and commits the shard. Output layout::

    OUTPUT/narrations/part-<bucket>.parquet
    OUTPUT/rejects/part-<bucket>.parquet
    OUTPUT/summaries/part-<bucket>.parquet   (Ego4D and ActivityNet inputs)
    OUTPUT/_shards/<bucket>.json            (completion markers)
    OUTPUT/run.json
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from egoray import storage
from egoray.config import JobConfig, Url
from egoray.data.activitynet import read_activitynet
from egoray.data.ego4d import read_narration_json, split_by_video
from egoray.data.ek100 import read_ek100_csv
from egoray.data.em_pkl import read_em_pickle
from egoray.data.fho import read_fho_main
from egoray.data.lavila import is_lavila_pickle, read_lavila_pickle
from egoray.data.narrations import CleanOptions, build_narrations, clean_summaries
from egoray.data.raw import InputError
from egoray.data.safe_pickle import safe_load
from egoray.data.splits import read_splits
from egoray.runner import JobRun, ShardedPlan, run_sharded
from egoray.runtime import Added, ShardLedger, bucket_of, finish, wait_all
from egoray.stages.base import StageTimer

Format = Literal["auto", "ego4d_json", "ego4d_fho", "em_pkl", "lavila_pkl", "ek100_csv", "activitynet"]


class Config(JobConfig):
    """Config of the ``ingest`` job."""

    job: Literal["ingest"] = "ingest"
    input: Url | list[Url] = Field(description="one input file URL or a list of them")
    format: Format = Field("auto", description="input format; auto = from the file name")
    splits: Url | None = Field(None, description="splits file (JSON or CSV) mapping videos to train/val/test")
    num_shards: int = Field(8, ge=1, le=4096, description="output shards per input file")
    clean: CleanOptions = CleanOptions()

    @field_validator("input")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("needs at least one input URL")
        return v

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def detect_format(url: str, forced: Format = "auto") -> str:
    if forced != "auto":
        return forced
    name = storage.basename(url).lower()
    if "activitynet" in name or name.endswith((".parquet", ".jsonl")):
        return "activitynet"
    if name.startswith("fho_") and name.endswith(".json"):
        return "ego4d_fho"
    if name.endswith(".json"):
        return "ego4d_json"
    if name.endswith((".pkl", ".pickle")):
        return "pickle"  # Ego4D's clip dicts or LaViLa's tuples: told apart by the content
    if name.endswith(".csv"):
        return "ek100_csv"
    raise InputError(f"{url}: cannot tell the format from the name; set format= (ego4d_json, ego4d_fho, em_pkl, lavila_pkl, ek100_csv, activitynet)")


def read_input(url: str, fmt: str) -> tuple[pa.Table, pa.Table | None]:
    """RAW narrations (and summaries, for Ego4D) of one input file."""
    try:
        data = storage.read_bytes(url)
    except storage.StorageError as e:
        raise InputError(f"cannot read input: {e}") from None
    name = storage.basename(url)
    if fmt == "ego4d_json":
        return read_narration_json(data, name)
    if fmt == "activitynet":
        return read_activitynet(data, name)
    if fmt == "ego4d_fho":
        return read_fho_main(data, name), None
    if fmt in ("pickle", "em_pkl", "lavila_pkl"):
        records = safe_load(data, name, numpy_arrays=True)
        if fmt == "lavila_pkl" or (fmt == "pickle" and is_lavila_pickle(records)):
            return read_lavila_pickle(data, name, records), None
        return read_em_pickle(data, name, records), None
    return read_ek100_csv(data, name), None


def split_into_buckets(table: pa.Table, key: str, num_buckets: int) -> list[pa.Table]:
    """Rows grouped by bucket of ``key``; bucket ``b`` keeps the rows' original order."""
    if table.num_rows == 0:
        return [table] * num_buckets
    encoded = pc.dictionary_encode(pc.fill_null(table[key], "")).combine_chunks()
    per_value = np.asarray(bucket_of(encoded.dictionary.to_pylist(), num_buckets), dtype=np.int32)
    buckets = per_value[encoded.indices.to_numpy(zero_copy_only=False)]
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(num_buckets + 1))
    sorted_table = table.take(pa.array(order))
    return [sorted_table.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(num_buckets)]


def shard_id(bucket: int) -> str:
    return f"{bucket:04d}"


def _read_and_split(url: str, fmt: str, num_shards: int, wanted: list[int]) -> list[tuple[Any, ...]]:
    """One input file → one part per wanted bucket.

    A narration.json is only cut into per-bucket JSON documents here (a fast top-level scan);
    the shard tasks decode them in parallel. The other formats are parsed here and split as tables.
    """
    t0 = time.perf_counter()
    if fmt == "ego4d_json":
        try:
            data = storage.read_bytes(url)
        except storage.StorageError as e:
            raise InputError(f"cannot read input: {e}") from None
        blobs = split_by_video(data, lambda uids: bucket_of(uids, num_shards), storage.basename(url))
        del data
        share = (time.perf_counter() - t0) / num_shards
        empty = b"{}"
        return _returns([("json", blobs.get(b, empty), storage.basename(url), share) for b in wanted])
    raw, summaries = read_input(url, fmt)
    raw_parts = split_into_buckets(raw, "video_uid", num_shards)
    sum_parts = split_into_buckets(summaries, "video_uid", num_shards) if summaries is not None else None
    share = (time.perf_counter() - t0) / num_shards
    return _returns([("table", raw_parts[b], sum_parts[b] if sum_parts else None, share) for b in wanted])


def _returns(parts: list[tuple[Any, ...]]) -> Any:
    """A task's ``num_returns = len(parts)`` values: with one, Ray stores the value itself (so a
    run with one shard left to do must return the part, not a list holding it)."""
    return parts if len(parts) > 1 else parts[0]


def _finish_shard(
    output: str, sid: str, clean: CleanOptions, splits: dict[str, str] | None, *parts: tuple[Any, ...]
) -> dict[str, Any]:
    """One bucket of videos, from every input file (in input order, so that duplicates across
    files are found and the first occurrence wins)."""
    raws, sums, read_seconds = [], [], 0.0
    for part in parts:
        if part[0] == "json":
            _, blob, name, seconds = part
            t0 = time.perf_counter()
            raw, summaries = read_narration_json(blob, name)
            seconds += time.perf_counter() - t0
        else:
            _, raw, summaries, seconds = part
        raws.append(raw)
        read_seconds += seconds
        if summaries is not None:
            sums.append(summaries)
    raw = pa.concat_tables(raws)
    summaries = pa.concat_tables(sums) if sums else None
    timer = StageTimer()
    narrations, rejects = build_narrations(raw, clean, splits, timer)
    tables = {"narrations": narrations, "rejects": rejects}
    if summaries is not None:
        tables["summaries"] = clean_summaries(summaries, clean)
    stages = timer.to_dict()
    marker = ShardLedger(output).commit(sid, tables, stages, {"read_seconds": read_seconds})
    return marker


def plan(config: Config) -> ShardedPlan:
    """The ingest job's plan (its inputs found and their formats told here, before anything runs)."""
    inputs = config.inputs()
    formats = [detect_format(u, config.format) for u in inputs]
    for url in inputs:
        if not storage.exists(url):
            raise InputError(f"input not found: {url}")
    splits = read_splits(config.splits) if config.splits else None
    all_ids = [shard_id(b) for b in range(config.num_shards)]

    def work(job: JobRun) -> Added:
        import ray

        ledger = ShardLedger(config.output)
        done_before = ledger.completed()
        read_task = ray.remote(_read_and_split)
        finish_task = ray.remote(_finish_shard)
        splits_ref = ray.put(splits)
        refs = []
        wanted = [b for b in range(config.num_shards) if shard_id(b) not in done_before]
        if wanted:
            per_input = []
            for url, fmt in zip(inputs, formats, strict=True):
                parts = read_task.options(num_returns=len(wanted)).remote(url, fmt, config.num_shards, wanted)
                per_input.append(parts if isinstance(parts, list) else [parts])
            for k, b in enumerate(wanted):
                refs.append(finish_task.remote(config.output, shard_id(b), config.clean, splits_ref,
                                               *[parts[k] for parts in per_input]))
        wait_all(refs, desc="ingest")
        read_seconds = sum(m.get("read_seconds", 0.0) for m in ledger.completed().values())
        return finish(job.manifest, ledger, all_ids, done_before, job.wall0, ("narrations", "rejects", "summaries"),
                      extra={"inputs": [{"url": u, "format": f} for u, f in zip(inputs, formats, strict=True)]},
                      timings={"read": read_seconds})

    lines = [f"read {url} ({fmt}), split by video into {config.num_shards} buckets"
             for url, fmt in zip(inputs, formats, strict=True)]
    lines.append(f"each bucket cleaned, deduplicated{' and given its split' if splits else ''} by a task: "
                 "narrations, rejects, summaries")
    return ShardedPlan(inputs + ([config.splits] if config.splits else []), all_ids, work, lines)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the ingest job; returns the run manifest as a dict."""
    return run_sharded(config, overwrite, plan(config))


__all__ = ["Config", "plan", "run"]
