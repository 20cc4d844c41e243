"""The executor of every streaming job: read → stages → sink on Ray Data, resumable.

A job declares a :class:`Pass`: a Parquet source (read by Ray Data in the workers), its stages
(:class:`egoray.stages.Stage`, one actor pool each for the whole pass, sized by the stage's
:class:`~egoray.stages.Resources`) and a :class:`~egoray.stages.Sink`. :func:`run_pass` runs it:

- **Workers read and write.** ``read_parquet`` tasks read the source; each stage's actors load
  their model once (``setup()``) and map batches; write tasks hand each finished batch to the
  sink, which writes every file of that batch under the output as ``<base>.*``. The driver
  plans and reports; no row passes through it.
- **Resume is Ray Data's checkpointing.** With a ``CheckpointConfig`` on the item id column,
  Ray Data records the ids of every committed write task under ``OUTPUT/_checkpoint`` with a
  two-phase commit (a pending record before the files, renamed after) and, on the next run,
  filters finished ids out right after the read and deletes the files of any write that never
  committed. A job killed at any moment and started again ends with the rows of an
  uninterrupted run, each once.
- **Counts** come from the sink's per-batch ``_counts/<base>.json`` (committed with the batch),
  so ``run.json`` adds up every run's work; model loads and stage seconds of *this* run come
  from a small stats actor the stage actors report to.

Inputs that need a whole-dataset step before the stages (grouping narrations, cutting videos
into windows, a deterministic ``limit``) are declared as :class:`~egoray.plans.Prepared` and
written once under ``OUTPUT/_work/`` (:mod:`egoray.work_inputs`); here they become a Ray Data
pass (:func:`prepared_dataset`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pyarrow as pa

from egoray import storage
from egoray.errors import ray_errors
from egoray.inprocess import refuse_in_process_output
from egoray.pass_stats import PassStats, ProgressLine
from egoray.plans import CHECKPOINT_DIR, MapGroups, Pass, PassResult, Prepared, SortLimit
from egoray.ray_data_context import data_context, io_cpus, read
from egoray.settings import cluster_address
from egoray.stages.base import Sink, Stage, pending, read_counts
from egoray.stages.guard import ErrorBudget, GuardedResult, StageFailing, call_guarded

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Ray-side wrappers
# ---------------------------------------------------------------------------------------------


class StageActor:
    """A Ray Data actor around one stage: threads from its CPUs, ``setup()`` once, then batches,
    each through :func:`~egoray.stages.guard.call_guarded` (a raising row is rejected, not the job)."""

    def __init__(self, stage: Stage, id_column: str, stats_actor: str | None = None,
                 budget: ErrorBudget | None = None) -> None:
        import ray
        import torch

        from egoray.metrics import job_for_metrics

        torch.set_num_threads(stage.resources.threads)
        self.stage = stage
        self.id_column = id_column
        self.stats = None
        self.metrics_job = job_for_metrics()
        self.unreported, self.reported_at = 0.0, time.monotonic()
        self.budget = replace(budget or ErrorBudget())  # this actor's rows: a dead stage stops at once
        stage.setup()
        if self.metrics_job:
            from egoray.metrics import add_async

            add_async(self.metrics_job, {}, stage.name, {"model_loads": 1})
        if stats_actor:
            with contextlib.suppress(ValueError):  # the driver may already have gone
                self.stats = ray.get_actor(stats_actor)
                self.stats.loaded.remote(stage.name, ray.get_runtime_context().get_actor_id())

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        rows = int(pending(batch).sum())
        result = call_guarded(self.stage, batch, self.id_column, self._row_failed)
        self.unreported += time.perf_counter() - t0
        self.budget.add(rows - result.errors, 0)
        if self.stats is not None:
            self._report(rows, result)
        if self.metrics_job:
            from egoray.metrics import add_async

            units = self.stage.units()
            if result.errors:
                units = {**units, "stage_errors": result.errors}
            add_async(self.metrics_job, units, self.stage.name, {"rows": rows, "stage_errors": result.errors})
        return result.table

    def _row_failed(self, summary: str) -> None:
        self.budget.add(0, 1, summary)
        self.budget.rows += 1
        if self.budget.all_failed():  # the share of all rows is the stats actor's to judge
            raise StageFailing(self.budget.message(self.stage.name))

    def _report(self, rows: int, result: GuardedResult) -> None:
        import ray

        if result.errors:  # wait for the verdict: the budget counts every actor's rows
            verdict = ray.get(self.stats.took.remote(self.stage.name, rows, result.errors, result.first_error))
            if verdict:
                raise StageFailing(verdict)
        else:  # in order with the calls above (one caller), without a round trip per batch
            self.stats.took.remote(self.stage.name, rows, 0)
        if time.monotonic() - self.reported_at > 2.0:  # not a call per batch
            self.stats.worked.remote(self.stage.name, self.unreported)
            self.unreported, self.reported_at = 0.0, time.monotonic()


def _sink_class() -> type:
    """A Ray Data file datasink around a :class:`Sink` (made lazily: importing it imports Ray)."""
    from ray.data._internal.planner.plan_write_op import WRITE_UUID_KWARG_NAME
    from ray.data.datasource import BlockBasedFileDatasink
    from ray.data.datasource.filename_provider import _split_base_and_ext

    class SinkDatasink(BlockBasedFileDatasink):
        """Every file of one write task is named ``<base>.*`` from the task's file name: Ray Data's
        checkpoint recovery deletes the files of an uncommitted task by that prefix."""

        def __init__(self, sink: Sink, output: str, rows_per_file: int) -> None:
            fs, path = storage.arrow_filesystem(output)
            super().__init__(path, filesystem=fs, try_create_dir=False, min_rows_per_file=rows_per_file,
                             file_format="parquet")
            self.sink = sink
            self.output = output

        def write_block(self, block: Any, block_index: int, ctx: Any) -> None:
            name = self.filename_provider.get_filename_for_task(ctx.kwargs[WRITE_UUID_KWARG_NAME], ctx.task_idx)
            base, _ = _split_base_and_ext(name)
            import ray

            self.sink.write(block.to_arrow(), self.output, base, {"node": ray.get_runtime_context().get_node_id()})

        def on_write_complete(self, write_result: Any) -> None:  # never delete the output folder
            return None

    return SinkDatasink


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


def cpu_share(stages: Sequence[Stage]) -> float:
    """The factor each stage's CPU request is scaled by so that all pools fit on this machine.

    Every stage's pool runs at once for the whole pass; on egoray's own local Ray, pools that
    together ask for more CPUs than the machine has would wait for each other forever, and Ray
    Data's own operators (the checkpoint filter of a resumed run, block splitting) need a CPU
    too. There the requests are scaled to leave one CPU free (each actor keeps its configured
    torch threads). On a cluster the autoscaler adds nodes instead, so nothing is scaled.
    """
    import ray

    if cluster_address():
        return 1.0
    resources = ray.cluster_resources()
    wanted_gpus = sum(s.resources.gpus * s.resources.actors for s in stages)
    if wanted_gpus > resources.get("GPU", 0) + 1e-9:
        from egoray.data.raw import InputError

        raise InputError(f"the stages ask for {wanted_gpus:g} GPUs; this machine's Ray has "
                         f"{resources.get('GPU', 0):g} (set gpus_per_actor: 0 to run on CPU)")
    wanted = sum(s.resources.cpus * s.resources.actors for s in stages)
    have = resources.get("CPU", 1.0)
    budget = have - 1 if have >= 2 else have
    if wanted <= budget:
        return 1.0
    print(f"[egoray] the stages' actor pools ask for {wanted:g} CPUs; this Ray has {have:g} and Ray Data needs "
          f"one: each actor's CPU request is scaled by {budget / wanted:.2f}", flush=True)
    return budget / wanted * 0.999


def actor_class(stage: Stage) -> type:
    """:class:`StageActor` under the stage's name: Ray Data names an operator after its class, so
    the dashboard, the progress lines and the actor list say ``MapBatches(encode)``, not one
    ``MapBatches(StageActor)`` per stage."""
    return type(stage.name, (StageActor,), {"__module__": __name__, "__qualname__": f"StageActor.{stage.name}",
                                            "__doc__": f"The actors of stage {stage.name!r}."})


def apply_stages(ds: Any, stages: Sequence[Stage], id_column: str, stats_actor: str | None = None,
                 budget: ErrorBudget | None = None) -> Any:
    """One actor pool per stage, for the whole pass."""
    import ray.data

    share = cpu_share(stages)
    for stage in stages:
        r = stage.resources
        ds = ds.map_batches(actor_class(stage), fn_constructor_kwargs={"stage": stage, "id_column": id_column,
                                                               "stats_actor": stats_actor, "budget": budget},
                            batch_size=r.batch_size, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=r.actors),
                            num_cpus=r.cpus * share, num_gpus=r.gpus or None)
    return ds


def checkpoint_config(output: str, id_column: str) -> Any:
    from ray.data.checkpoint import CheckpointConfig

    url = storage.join(output, CHECKPOINT_DIR)
    fs, path = storage.arrow_filesystem(url)
    return CheckpointConfig(id_column=id_column, checkpoint_path=path, delete_checkpoint_on_success=False,
                            override_filesystem=fs)


def run_pass(p: Pass, output: str, budget: ErrorBudget | None = None) -> PassResult:
    """Run (or resume) a pass into ``output``; Ray must be running."""
    import ray

    from egoray.metrics import on_head_node

    refuse_in_process_output(output)
    t0 = time.perf_counter()
    stats_name = f"egoray-pass-{uuid.uuid4().hex[:12]}"
    # on the head: a worker node lost mid-job must not take the job's statistics with it, and an
    # actor of ours on an autoscaled node would keep that node (a GPU instance) from scaling down
    stats = ray.remote(num_cpus=0)(PassStats).options(name=stats_name, scheduling_strategy=on_head_node()
                                                      ).remote(budget)
    line = ProgressLine(stats, [s.name for s in p.stages])
    try:
        with ray_errors(), data_context(checkpoint_config(output, p.id_column)):
            blocks = 4 * max((s.resources.actors for s in p.stages), default=1)
            ds = apply_stages(read(p.source, blocks), p.stages, p.id_column, stats_name, budget)
            ds.set_name(p.name)  # how the dashboard's Jobs and Data views list it
            line.start()
            try:
                ds.write_datasink(_sink_class()(p.sink, output, p.rows_per_file),
                                  ray_remote_args={"num_cpus": io_cpus()})
            finally:
                line.stop()
        try:
            loads, seconds, actors = ray.get(stats.get.remote(), timeout=60)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorDiedError) as e:
            # statistics only: the output is complete
            log.warning("egoray: model loads and stage times of this run are unknown (%s)", type(e).__name__)
            loads, seconds, actors = {}, {}, {}
    finally:
        ray.kill(stats)
    return PassResult(read_counts(output), loads, seconds, time.perf_counter() - t0, actors)


def prepared_dataset(prep: Prepared) -> Any:
    """A :class:`~egoray.plans.Prepared` input as a Ray Dataset: its steps as Ray Data operators
    (a ``groupby`` where it groups), run by the workers."""
    import ray.data

    ds = read(prep.source)
    for step in prep.steps:
        if isinstance(step, MapGroups):
            ds = ds.groupby(step.key).map_groups(step.fn, fn_args=step.args, batch_format="pyarrow")
        elif isinstance(step, SortLimit):
            ds = ds.sort(step.key).limit(step.n)
        elif isinstance(step.fn, type):
            ds = ds.map_batches(step.fn, fn_constructor_args=step.args, batch_format="pyarrow",
                                batch_size=step.batch_size, compute=ray.data.ActorPoolStrategy(size=step.actors))
        else:
            ds = ds.map_batches(step.fn, fn_args=step.args, fn_kwargs=step.kwargs, batch_format="pyarrow",
                                batch_size=step.batch_size)
    return ds


def write_dataset(build: Callable[[], Any], url: str) -> None:
    """The rows of the Ray Dataset ``build()`` returns as Parquet files under ``url``, written by
    the workers (built here: a dataset keeps the Ray Data context it was made in)."""
    with ray_errors(), data_context(None):
        fs, path = storage.arrow_filesystem(url)
        build().write_parquet(path, filesystem=fs, ray_remote_args={"num_cpus": io_cpus()})
