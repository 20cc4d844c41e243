"""The one lifecycle of every job: claim the output, reach Ray, run, write ``run.json``, shut down.

A job hands :func:`run_lifecycle` its config and a ``body``: the work itself (a streaming pass,
training, the shard tasks of ingest or the sections of eval), which fills the run's
:class:`~egoray.runtime.RunManifest` and says what *this* run added. Everything around the work
happens here, in this order, for every job:

1. the output is claimed (:func:`~egoray.runtime.claim_output`: a different config, or inputs
   changed since an earlier run, are refused; ``--overwrite`` clears an egoray output only);
2. Ray is reached (:func:`~egoray.runtime.ensure_ray`, the cluster at ``RAY_ADDRESS`` or a
   local one) — unless the job runs in process (``ray.in_process``, streaming jobs only);
3. the body runs;
4. ``run.json`` is written (only when the body returned: a killed or failed run leaves the
   last complete manifest, if any, untouched) and this run's counts go to the metrics;
5. a Ray this call started is shut down, whatever happened.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from egoray import storage
from egoray.config import JobConfig, StreamingJobConfig
from egoray.inprocess import in_process
from egoray.plans import StreamingPlan
from egoray.runtime import MANIFEST_FILE, Added, RunManifest, ShardLedger, claim_output, ensure_ray, input_signatures
from egoray.stages.base import read_counts, total_counts, write_part
from egoray.stages.guard import ErrorBudget
from egoray.work_inputs import clean_work, resolve


@dataclass
class JobRun:
    """A job while it runs: its config, the manifest it fills, and whether it resumes a run."""

    config: JobConfig
    manifest: RunManifest
    resumed: bool
    wall0: float

    def elapsed(self) -> float:
        return time.perf_counter() - self.wall0


def run_lifecycle(config: JobConfig, overwrite: bool, body: Callable[[JobRun], Added | None], *,
                  inputs: Iterable[str] = (), shards: list[str] | None = None,
                  uses_ray: bool = True, dashboard: bool = False, skip_complete: bool = False) -> dict[str, Any]:
    """Run (or resume) one job through the steps of the module docstring; returns its ``run.json``.

    ``inputs``: URLs whose change refuses a resume; ``shards``: the units of a sharded job
    (recorded with :class:`~egoray.runtime.ShardLedger`); ``skip_complete``: a job whose ``run.json`` says complete
    does nothing again (streaming jobs; a sharded job skips its own finished shards).
    """
    wall0 = time.perf_counter()
    manifest = RunManifest.start(config)
    inputs = list(inputs)
    if shards is not None:
        resumed = ShardLedger(config.output).prepare(config, shards, overwrite=overwrite, inputs=inputs)
    else:
        resumed = claim_output(config, overwrite, input_signatures(inputs))
    run_url = storage.join(config.output, MANIFEST_FILE)
    if skip_complete and resumed and storage.exists(run_url):
        previous = storage.read_json(run_url)
        if previous.get("status") == "complete":
            print(f"[{config.job}] {config.output} is complete already; nothing to do", flush=True)
            return previous
    started = ensure_ray(config.ray, dashboard=dashboard, job=config.job) if uses_ray else False
    try:
        added = body(JobRun(config, manifest, resumed, wall0))
        manifest.timings.setdefault("wall_this_run", time.perf_counter() - wall0)
        manifest.write()
        if added is not None and uses_ray:
            from egoray.metrics import record

            record(config.job, added.stages, added.units)
    finally:
        if started:
            import ray

            ray.shutdown()
    return manifest.to_dict()


@dataclass
class ShardedPlan:
    """A job whose units of work are named shards — ingest's buckets of videos, eval's sections —
    each committed by a Ray task with its :class:`~egoray.runtime.ShardLedger` marker, so a
    re-run does only the shards not done. ``work(job)`` runs those and returns what this run
    added; ``after(run_json)`` (optional) follows a complete run (eval's report)."""

    inputs: list[str]
    shards: list[str]
    work: Callable[[JobRun], Added]
    lines: list[str]  # what describe() prints
    after: Callable[[dict[str, Any]], None] | None = None

    def describe(self) -> list[str]:
        """The plan in lines a person reads (``egoray run --plan``)."""
        return [*self.lines, f"{len(self.shards)} shard(s), each committed with its marker: "
                f"{', '.join(self.shards[:6])}{' ...' if len(self.shards) > 6 else ''}",
                "resume: finished shards are kept; refused if these inputs or the config change"
                + (f" ({len(self.inputs)} input(s))" if self.inputs else "")]


def run_sharded(config: JobConfig, overwrite: bool, plan: ShardedPlan) -> dict[str, Any]:
    """Run (or resume) a sharded job's plan and return its ``run.json``."""
    manifest = run_lifecycle(config, overwrite, plan.work, inputs=plan.inputs, shards=plan.shards)
    if plan.after is not None and manifest["status"] == "complete":
        plan.after(manifest)
    return manifest


def run_plan(config: StreamingJobConfig, overwrite: bool, plan: StreamingPlan) -> dict[str, Any]:
    """Run (or resume) a streaming job's plan and return its ``run.json``.

    The pass's prepared input (if its source names one) is written first, with Ray running;
    ``plan.finish`` writes the job's exports from the committed tables. A job whose ``run.json``
    already says complete does nothing again. With ``ray.in_process`` the plan runs in this
    process (:mod:`egoray.inprocess`), without Ray.
    """
    local = config.ray.in_process

    def body(job: JobRun) -> Added:
        with in_process(config.job) if local else contextlib.nullcontext():
            return _stream(config, plan, job)

    return run_lifecycle(config, overwrite, body, inputs=plan.inputs, uses_ray=not local, skip_complete=True)


def _stream(config: StreamingJobConfig, plan: StreamingPlan, job: JobRun) -> Added:
    from egoray.executor import run_pass
    from egoray.inprocess import run_pass_in_process

    manifest = job.manifest
    p = replace(plan.work, source=resolve(config.output, plan.work.source))
    before = {r["base"] for r in read_counts(config.output)}
    print(f"[{config.job}] {' → '.join(s.name for s in p.stages)} → {config.output}"
          f"{' (resuming)' if before else ''}{' in process' if config.ray.in_process else ''}", flush=True)
    execute = run_pass_in_process if config.ray.in_process else run_pass
    result = execute(p, config.output, ErrorBudget(max_fraction=config.max_error_fraction))
    extra = plan.finish(config.output) if plan.finish is not None else {}
    stage_names = list(p.sink.stages)
    new = [r for r in result.counts if r["base"] not in before]
    manifest.stages = total_counts(result.counts, stage_names)
    manifest.timings = {"wall_this_run": job.elapsed(), "pass_this_run": result.seconds,
                        **{f"stage_{k}": v for k, v in result.stage_seconds.items()}}
    manifest.extra.update({
        "items": sum(r["items"] for r in result.counts), "items_this_run": sum(r["items"] for r in new),
        "batches": len(result.counts), "units": _sum_units(result.counts), "model_loads": result.loads,
        # the actors that started, which a cluster short of room may hold below the configured
        "actors": {s.name: result.actors.get(s.name, s.resources.actors) if result.actors else
                   s.resources.actors for s in p.stages},
        "actors_configured": {s.name: s.resources.actors for s in p.stages}, **extra})
    for name, table in p.sink.empty_tables().items():
        if not storage.listdir(storage.join(config.output, name), ".parquet"):
            write_part(config.output, name, "empty", table)
    manifest.status = "complete"
    clean_work(config.output)
    return Added({k: v.to_dict() for k, v in total_counts(new, stage_names).items()}, _sum_units(new))


def _sum_units(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    units: dict[str, int] = {}
    for r in records:
        for k, v in r.get("units", {}).items():
            units[k] = units.get(k, 0) + int(v)
    return units
