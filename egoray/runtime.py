"""Runtime: reach Ray, keep the shard ledger, write the run manifest.

A job splits its work into deterministic shards. A shard's tables are written under their final
names (each write atomic, see :mod:`egoray.storage`) and then a marker ``_shards/<id>.json`` is
written last, holding that shard's per-stage counts and timings. A restarted job skips shards
whose marker exists and rewrites the others in full, so a run killed at any moment and started
again ends with exactly the output of an uninterrupted run.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pyarrow as pa

from egoray import storage
from egoray.config import JobConfig, RayOptions

SHARDS_DIR = "_shards"
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "run.json"

PACKAGES = ("egoray", "ray", "pyarrow", "numpy", "pydantic", "h5py", "av", "fsspec", "s3fs", "msgspec", "torch",
            "transformers", "xgrammar", "sentence-transformers", "open_clip_torch", "vllm")


class OutputConflict(RuntimeError):
    """The output directory holds a run of a different config."""


def ensure_ray(options: RayOptions | None = None, dashboard: bool = False) -> bool:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray sized to this machine.

    Returns True when this call started (and so should later shut down) Ray.
    """
    _quiet_ray_defaults()
    import ray

    if ray.is_initialized():
        return False
    options = options or RayOptions()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=options.num_cpus or os.cpu_count() or 1,
            object_store_memory=options.object_store_mb * 2**20 if options.object_store_mb else None,
            include_dashboard=options.dashboard if options.dashboard is not None else dashboard,
            log_to_driver=True,
        )
    return True


def _quiet_ray_defaults() -> None:
    """Environment defaults for a local Ray (a user's own setting wins).

    Ray's ``uv run`` hook would copy the working directory into a fresh environment for every
    worker: slow, and relative paths would point elsewhere. Our workers use the driver's Python.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@dataclass
class StageCounts:
    """What one stage saw: ``n_in == n_out + rejected`` always holds for a finished stage."""

    n_in: int = 0
    n_out: int = 0
    rejected: int = 0
    seconds: float = 0.0

    def add(self, other: StageCounts) -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        self.rejected += other.rejected
        self.seconds += other.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"in": self.n_in, "out": self.n_out, "rejected": self.rejected, "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageCounts:
        return cls(int(d["in"]), int(d["out"]), int(d["rejected"]), float(d.get("seconds", 0.0)))


class StageTimer:
    """Collects per-stage counts inside one shard: ``with timer.stage("x") as c: c.n_in = ...``."""

    def __init__(self) -> None:
        self.stages: dict[str, StageCounts] = {}

    class _Ctx:
        def __init__(self, counts: StageCounts) -> None:
            self.counts = counts

        def __enter__(self) -> StageCounts:
            self.t0 = time.perf_counter()
            return self.counts

        def __exit__(self, *exc: object) -> None:
            self.counts.seconds += time.perf_counter() - self.t0

    def stage(self, name: str) -> StageTimer._Ctx:
        return self._Ctx(self.stages.setdefault(name, StageCounts()))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {k: v.to_dict() for k, v in self.stages.items()}


class ShardLedger:
    """Which shards of a job's output are complete, and how to commit one.

    Ray-free: it is used from the driver and from inside tasks/actors alike.
    """

    def __init__(self, output: str) -> None:
        self.output = output.rstrip("/")
        self.shards_url = storage.join(self.output, SHARDS_DIR)

    def marker_url(self, shard_id: str) -> str:
        return storage.join(self.shards_url, f"{shard_id}.json")

    def table_url(self, name: str, shard_id: str) -> str:
        return storage.join(self.output, name, f"part-{shard_id}.parquet")

    def prepare(
        self,
        config: JobConfig,
        shard_ids: list[str],
        overwrite: bool = False,
        inputs: list[str] | None = None,
        items: Iterable[str] | None = None,
    ) -> None:
        """Record the plan, refusing to mix outputs of different configs or changed inputs.

        ``inputs`` are input file URLs whose size/modification stamp must not change between a
        run and its resumption (shards already written came from the old file); ``items`` are the
        ids of the work items (videos, texts, groups), whose set must not change either.
        """
        plan_url = storage.join(self.shards_url, PLAN_FILE)
        signatures = {u: storage.signature(u) for u in inputs or []}
        if items is not None:
            import hashlib

            signatures["<items>"] = hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]
        if overwrite:
            storage.remove(self.output, recursive=True)
        elif storage.exists(plan_url):
            plan = storage.read_json(plan_url)
            if plan.get("fingerprint") != config.fingerprint():
                raise OutputConflict(
                    f"{self.output} holds the output of a different config "
                    f"(fingerprint {plan.get('fingerprint')} vs {config.fingerprint()}); "
                    "pick another output or re-run with --overwrite"
                )
            changed = [u for u, sig in signatures.items() if plan.get("inputs", {}).get(u) != sig]
            if changed:
                what = ", ".join("the set of input items" if u == "<items>" else u for u in changed)
                raise OutputConflict(
                    f"{self.output} was written from an earlier version of {what}; "
                    "pick another output or re-run with --overwrite"
                )
        storage.makedirs(self.output)
        storage.remove_temporaries(self.output)
        storage.write_json(
            plan_url,
            {"job": config.job, "fingerprint": config.fingerprint(), "inputs": signatures, "shards": shard_ids},
        )

    def completed(self) -> dict[str, dict[str, Any]]:
        """Markers of the complete shards, keyed by shard id."""
        out = {}
        for url in storage.listdir(self.shards_url, ".json"):
            shard_id = storage.basename(url)[: -len(".json")]
            out[shard_id] = storage.read_json(url)
        return out

    def commit(
        self,
        shard_id: str,
        tables: Mapping[str, pa.Table],
        stages: Mapping[str, Mapping[str, Any]],
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write a shard's tables, then its marker (last, so a marker means 'all written')."""
        rows = {}
        for name, table in tables.items():
            storage.write_parquet(self.table_url(name, shard_id), table)
            rows[name] = table.num_rows
        marker = {"shard": shard_id, "rows": rows, "stages": dict(stages), **(extra or {})}
        storage.write_json(self.marker_url(shard_id), marker)
        return marker


@dataclass
class RunManifest:
    """``run.json``: what ran, with which versions, what every stage counted, how long it took."""

    job: str
    config: dict[str, Any]
    output: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: str = "running"
    stages: dict[str, StageCounts] = field(default_factory=dict)
    shards: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, config: JobConfig) -> RunManifest:
        return cls(job=config.job, config=config.model_dump(mode="json"), output=config.output)

    def add_stages(self, markers: Iterable[Mapping[str, Any]]) -> None:
        for marker in markers:
            for name, counts in marker.get("stages", {}).items():
                self.stages.setdefault(name, StageCounts()).add(StageCounts.from_dict(counts))

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds") if self.status != "running" else None,
            "output": self.output,
            "config": self.config,
            "versions": package_versions(),
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "shards": self.shards,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            **self.extra,
        }

    def write(self) -> None:
        storage.write_json(storage.join(self.output, MANIFEST_FILE), self.to_dict())


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def bucket_of(keys: list[str], num_buckets: int) -> list[int]:
    """Deterministic bucket per key (CRC-32, stable across processes and machines)."""
    import zlib

    cache: dict[str, int] = {}
    out = []
    for key in keys:
        b = cache.get(key)
        if b is None:
            b = cache[key] = zlib.crc32((key or "").encode()) % num_buckets
        out.append(b)
    return out


def wait_all(refs: list, desc: str, unit: str = "shard") -> list:
    """``ray.get`` every ref, in completion order, with a progress bar on stderr."""
    import ray
    from tqdm import tqdm

    results = {}
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit, disable=not refs, mininterval=0.5) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    # Our own errors (bad input, storage) reach the user as themselves, one line,
                    # not wrapped in a remote traceback.
                    cause = getattr(e, "cause", None)
                    if cause is not None and type(cause).__module__.startswith("egoray."):
                        raise cause from None
                    raise
                bar.update(1)
    return [results[i] for i in range(len(refs))]


def waves(shard_ids: list[str], done: Iterable[str], per_wave: int) -> list[list[str]]:
    """The shards still to do, in order, cut into waves of ``per_wave`` (processed together)."""
    finished = set(done)
    todo = [s for s in shard_ids if s not in finished]
    return [todo[i:i + per_wave] for i in range(0, len(todo), per_wave)]


def assign_shards(items: list[dict[str, Any]], key: str, num_shards: int) -> tuple[list[str], dict[str, list]]:
    """Shard ids ``0000..`` and the items of each, by CRC-32 of ``item[key]`` (deterministic)."""
    shard_ids = [f"{b:04d}" for b in range(num_shards)]
    by_shard: dict[str, list] = {s: [] for s in shard_ids}
    for item, b in zip(items, bucket_of([str(i[key]) for i in items], num_shards), strict=True):
        by_shard[shard_ids[b]].append(item)
    return shard_ids, by_shard


def finish(config: JobConfig, ledger: ShardLedger, shard_ids: list[str], done_before: Mapping[str, Any],
           wall0: float, tables: Iterable[str], extra: Mapping[str, Any] | None = None) -> RunManifest:
    """Build the manifest of a sharded job from all markers (status, counts, shards, timings)."""
    markers = ledger.completed()
    missing = sorted(set(shard_ids) - set(markers))
    manifest = RunManifest.start(config)
    manifest.add_stages(markers[s] for s in shard_ids if s in markers)
    manifest.shards = {"total": len(shard_ids), "completed": len(markers), "resumed": len(done_before),
                       "written_now": len(shard_ids) - len(done_before) - len(missing), "missing": missing}
    manifest.timings = {"work": sum(m.get("seconds", 0.0) for m in markers.values()),
                        "wall_this_run": time.perf_counter() - wall0}
    manifest.extra["tables"] = {name: sum(m["rows"].get(name, 0) for m in markers.values()) for name in tables}
    manifest.extra.update(extra or {})
    manifest.status = "complete" if not missing else "incomplete"
    record_metrics(config, markers, done_before)
    return manifest


def record_metrics(config: JobConfig, markers: Mapping[str, Any], done_before: Mapping[str, Any]) -> None:
    """Export what this run added (shards it committed) as Ray metrics (:mod:`egoray.metrics`)."""
    from egoray.metrics import record

    new = [m for s, m in markers.items() if s not in done_before]
    this_run = RunManifest.start(config)
    this_run.add_stages(new)
    record(config.job, {k: v.to_dict() for k, v in this_run.stages.items()},
           {u: sum(m.get(u, 0) or 0 for m in new) for u in ("frames", "captions", "paraphrases")})


def dataset_from_table(table: Any, batch_size: int, workers: int) -> Any:
    """A Ray Dataset over an Arrow table, cut into enough blocks for ``workers`` actors to share.

    ``ray.data.from_arrow(table)`` makes one block, and one block is processed by one actor:
    the rest of the pool would sit idle.
    """
    import math

    import ray

    n = table.num_rows
    blocks = max(1, min(math.ceil(n / max(1, batch_size)), workers * 4))
    step = math.ceil(n / blocks) if n else 1
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, max(n, 1), step)])
