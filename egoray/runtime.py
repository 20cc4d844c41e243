"""Runtime: reach Ray, claim an output directory, keep the run manifest (and the shard ledger).

Streaming jobs (:mod:`egoray.executor`) resume through Ray Data's checkpointing; what stays here
is what every job shares: the output claim (a different config into the same output is refused,
``--overwrite`` only clears egoray outputs), ``run.json``, and Ray start-up. The
:class:`ShardLedger` remains for the jobs whose unit of work is not a row of a Ray Dataset:
ingest (one Ray task per video bucket, reading every input file) and eval (one marker per section).
A ledger shard's tables are written first and its marker ``_shards/<id>.json`` last, so a
restarted job skips shards with a marker and rewrites the others in full.
"""

from __future__ import annotations

import hashlib
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
from egoray.console import LOG_DIR
from egoray.errors import EgorayError, ray_errors
from egoray.settings import Settings, apply_driver_defaults, cluster_address
from egoray.stages.base import StageCounts

SHARDS_DIR = "_shards"
JOB_FILE = "_job.json"
MANIFEST_FILE = "run.json"

PACKAGES = ("egoray", "ray", "pyarrow", "numpy", "pydantic", "h5py", "av", "fsspec", "s3fs", "msgspec", "torch",
            "transformers", "xgrammar", "sentence-transformers", "open_clip_torch", "vllm")


class OutputConflict(EgorayError, RuntimeError):
    """The output directory holds a run of a different config, or is not an egoray output."""


def ensure_ray(options: RayOptions | None = None, dashboard: bool = False, job: str | None = None) -> bool:
    """Join the cluster at ``RAY_ADDRESS`` if set, else start egoray's own local Ray.

    Without ``RAY_ADDRESS`` a new local instance is always started (``address="local"``), never
    a ``ray start`` head that happens to run on this machine (or the stale address file a killed
    one leaves behind). Either way every worker gets :class:`egoray.settings.Settings` through
    the runtime env. Returns True when this call started (and so should later shut down) Ray.
    """
    apply_driver_defaults()
    import ray

    if ray.is_initialized():
        return False
    options = options or RayOptions()
    address = cluster_address()
    # the job name goes to workers only on a cluster, where they add to its metrics
    runtime_env = Settings.from_environ(job=job if address else None).job_runtime_env()
    if address:
        # a driver submitted through the Jobs API already runs in the job's runtime env (which
        # `egoray submit` built from the same settings); Ray refuses a second one
        submitted = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))
        ray.init(address=address, runtime_env=None if submitted else runtime_env, log_to_driver=True)
    else:
        ray.init(
            address="local",
            num_cpus=options.num_cpus or os.cpu_count() or 1,
            object_store_memory=options.object_store_mb * 2**20 if options.object_store_mb else None,
            include_dashboard=options.dashboard if options.dashboard is not None else dashboard,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    return True


def input_signatures(urls: Iterable[str]) -> dict[str, str]:
    """Size/modification stamp of each input file (of every Parquet file under a directory)."""
    out: dict[str, str] = {}
    for url in urls:
        files = storage.listdir(url, ".parquet") if _is_dir(url) else [url]
        for f in files:
            out[f] = storage.signature(f)
    return out


def _is_dir(url: str) -> bool:
    fs, path = storage.filesystem(url)
    try:
        return bool(fs.isdir(path))
    except Exception:
        return False


def is_egoray_output(url: str) -> bool:
    return storage.exists(storage.join(url, JOB_FILE)) or storage.exists(storage.join(url, MANIFEST_FILE)) \
        or storage.exists(storage.join(url, SHARDS_DIR))


def claim_output(config: JobConfig, overwrite: bool = False, inputs: Mapping[str, str] | None = None) -> bool:
    """Make ``config.output`` this job's: returns True when it resumes an earlier run.

    A different config, or inputs (``{url: signature}``) that changed since the earlier run, are
    refused: rows already written came from them. ``overwrite`` clears the directory first, but
    only an egoray output (or an empty directory): a mistyped ``output`` must not delete a
    user's data. Half-written temporaries of a killed run are removed.
    """
    output = config.output
    job_url = storage.join(output, JOB_FILE)
    inputs = dict(inputs or {})
    if overwrite and storage.exists(output):
        if storage.listdir(output) + storage.listdirs(output) and not is_egoray_output(output):
            raise OutputConflict(f"{output} is not empty and holds no egoray output; refusing to delete it "
                                 "(pick an empty or new output directory)")
        # everything but the logs, one of which this run is writing
        for entry in storage.listdir(output, skip=()) + storage.listdirs(output, skip=()):
            if storage.basename(entry) != LOG_DIR:
                storage.remove(entry, recursive=True)
    resumed = False
    if storage.exists(job_url):
        plan = storage.read_json(job_url)
        if plan.get("fingerprint") != config.fingerprint():
            raise OutputConflict(f"{output} holds the output of a different config (fingerprint "
                                 f"{plan.get('fingerprint')} vs {config.fingerprint()}); pick another output "
                                 "or re-run with --overwrite")
        before = plan.get("inputs", {})
        changed = sorted(u for u in set(before) | set(inputs) if before.get(u) != inputs.get(u))
        if changed:
            raise OutputConflict(f"{output} was written from an earlier version of {', '.join(changed[:3])}"
                                 f"{' and more' if len(changed) > 3 else ''}; pick another output or re-run "
                                 "with --overwrite")
        resumed = True
    elif storage.exists(output) and storage.listdir(output) + storage.listdirs(output) \
            and not is_egoray_output(output):
        raise OutputConflict(f"{output} is not empty and holds no egoray output; pick an empty or new directory")
    storage.makedirs(output)
    storage.remove_temporaries(output)
    storage.write_json(job_url, {"job": config.job, "fingerprint": config.fingerprint(), "inputs": inputs})
    return resumed


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
    ) -> bool:
        """Claim the output (:func:`claim_output`) and record the plan; True when it resumes a run.

        ``inputs`` are input URLs whose size/modification stamp must not change between a run and
        its resumption (shards already written came from the old files); ``items`` are the ids of
        the work items, whose set must not change either.
        """
        signatures = input_signatures(inputs or [])
        if items is not None:
            signatures["<the set of input items>"] = hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]
        resumed = claim_output(config, overwrite, signatures)
        storage.write_json(storage.join(self.shards_url, "_plan.json"), {"shards": shard_ids})
        return resumed

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
class Added:
    """What one run added, for the metrics (:mod:`egoray.metrics`): per-stage counts
    (``in``/``out``/``rejected``) and units of work (frames, tokens, examples trained)."""

    stages: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    units: Mapping[str, float] = field(default_factory=dict)


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
                with ray_errors():  # our own errors reach the user as themselves, one line
                    results[index[ref]] = ray.get(ref)
                bar.update(1)
    return [results[i] for i in range(len(refs))]


def finish(manifest: RunManifest, ledger: ShardLedger, shard_ids: list[str], done_before: Mapping[str, Any],
           wall0: float, tables: Iterable[str], extra: Mapping[str, Any] | None = None,
           timings: Mapping[str, float] | None = None) -> Added:
    """Complete the manifest of a sharded job from all markers; returns what this run added
    (the shards it committed)."""
    markers = ledger.completed()
    missing = sorted(set(shard_ids) - set(markers))
    manifest.add_stages(markers[s] for s in shard_ids if s in markers)
    manifest.shards = {"total": len(shard_ids), "completed": len(markers), "resumed": len(done_before),
                       "written_now": len(shard_ids) - len(done_before) - len(missing), "missing": missing}
    work = {"work": sum(m["seconds"] for m in markers.values())} if all("seconds" in m for m in markers.values()) \
        else {}
    manifest.timings = {**work, **(timings or {}), "wall_this_run": time.perf_counter() - wall0}
    manifest.extra["tables"] = {name: sum(m["rows"].get(name, 0) for m in markers.values()) for name in tables}
    manifest.extra.update(extra or {})
    manifest.status = "complete" if not missing else "incomplete"
    new = [m for s, m in markers.items() if s not in done_before]
    this_run: dict[str, StageCounts] = {}
    for marker in new:
        for name, counts in marker.get("stages", {}).items():
            this_run.setdefault(name, StageCounts()).add(StageCounts.from_dict(counts))
    return Added({k: v.to_dict() for k, v in this_run.items()},
                 {u: sum(m.get(u, 0) or 0 for m in new) for u in ("frames", "captions", "paraphrases")})
