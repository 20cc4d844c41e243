"""Our per-stage counters as Ray metrics (Prometheus, the dashboard's Metrics view).

Counters live in one detached actor per cluster (``egoray-metrics``), so they outlive the
short-lived driver of each job and are exported by Ray's metrics agent like any Ray metric
(``ray_egoray_records_total{job, stage, kind}``, ``ray_egoray_units_total{job, unit}``). Jobs
call :func:`record` with what *this run* did; stage actors add live counts as they work
(``ray_egoray_stage_total{job, stage, kind}``: rows, stage_errors, model_loads), which is what
rows/s and errors on a dashboard come from. Nothing here is required for a job to succeed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from egoray.settings import cluster_address

ACTOR_NAME = "egoray-metrics"
NAMESPACE = "egoray"
log = logging.getLogger(__name__)


class MetricsActor:
    def __init__(self) -> None:
        from ray.util.metrics import Counter

        self.records = Counter("egoray_records", description="records into / out of / rejected by a stage",
                               tag_keys=("job", "stage", "kind"))
        self.units = Counter("egoray_units", description="work done: frames decoded, tokens generated, "
                             "examples trained, captions", tag_keys=("job", "unit"))
        self.stage = Counter("egoray_stage", description="live, per stage: rows taken, rows raised on "
                             "(stage_errors), model loads", tag_keys=("job", "stage", "kind"))

    def add(self, job: str, stages: Mapping[str, Mapping[str, Any]], units: Mapping[str, float]) -> bool:
        for stage, counts in stages.items():
            for kind in ("in", "out", "rejected"):
                value = float(counts.get(kind, 0) or 0)
                if value > 0:
                    self.records.inc(value, tags={"job": job, "stage": stage, "kind": kind})
        for unit, value in units.items():
            if value and value > 0:
                self.units.inc(float(value), tags={"job": job, "unit": unit})
        return True

    def add_stage(self, job: str, stage: str, counts: Mapping[str, float], units: Mapping[str, float]) -> None:
        for kind, value in counts.items():
            if value and value > 0:
                self.stage.inc(float(value), tags={"job": job, "stage": stage, "kind": kind})
        self.add(job, {}, units)


_actor: Any = None


def head_node_id() -> str:
    """The head node's id (the driver's node where no node says it is the head)."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return str(node["NodeID"])
    return ray.get_runtime_context().get_node_id()


def on_head_node() -> Any:
    """The scheduling strategy of every long-lived actor egoray starts: the head node, which the
    autoscaler never removes. An actor on an autoscaled worker would keep that node (a GPU
    instance, billed) alive after the job."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(head_node_id(), soft=False)


def _metrics_actor() -> Any:
    import ray

    return ray.remote(num_cpus=0)(MetricsActor).options(
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=on_head_node()).remote()


def add_async(job: str, units: Mapping[str, float], stage: str | None = None,
              stage_counts: Mapping[str, float] | None = None) -> None:
    """Fire-and-forget increments from inside a task or actor (tokens per generated batch; a stage
    actor's rows, errors and model loads)."""
    global _actor
    try:
        if _actor is None:
            _actor = _metrics_actor()
        if stage is None:
            _actor.add.remote(job, {}, dict(units))
        else:
            _actor.add_stage.remote(job, stage, dict(stage_counts or {}), dict(units))
    except Exception as e:
        log.warning("egoray metrics not recorded: %s", e)


def job_for_metrics() -> str | None:
    """The job whose counters a worker adds to: in its runtime env only when the job joined a
    cluster (:func:`egoray.runtime.ensure_ray`)."""
    return os.environ.get("EGORAY_JOB") or None


def record(job: str, stages: Mapping[str, Mapping[str, Any]], units: Mapping[str, float] | None = None) -> None:
    """Add this run's counts to the cluster's counters (best effort: a failure is logged only)."""
    try:
        import ray

        # Only on a cluster we joined: a local Ray (and its counters) ends with the job anyway.
        if not ray.is_initialized() or not cluster_address():
            return
        ray.get(_metrics_actor().add.remote(job, {k: dict(v) for k, v in stages.items()}, dict(units or {})), timeout=60)
    except Exception as e:
        log.warning("egoray metrics not recorded: %s", e)
