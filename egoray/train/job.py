"""The driver half every training job shares: pairs, Ray Train, export, ``run.json``.

The driver claims the output, has the workers build the pairs (:mod:`egoray.train.data`), takes
their counts, starts Ray Train over the pair datasets, and writes what the rank-0 worker
exported. It never holds a pair.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import JobConfig, StrictModel
from egoray.data.raw import InputError
from egoray.models.checkpoint import MODEL_FILE
from egoray.runner import JobRun, run_lifecycle
from egoray.runtime import Added
from egoray.stages.base import StageCounts
from egoray.train.distributed import TrainerOptions
from egoray.train.recipe import LoopConfig


class AuxTexts(StrictModel):
    """More texts of the same kind of windows, trained beside the narrations (LaViLa's pseudo
    narrations or rephrased ones): which kind they are and how far their windows are widened. Each
    training job says where the texts come from (a subclass adds that key)."""

    kind: Literal["pseudo", "human"] | None = Field(
        None, description="pseudo: narrator texts (their own temperature); human: people's texts (rephrased)")
    offset_sec: float | None = Field(None, ge=0, description="widen each window by this; default: 0 for pseudo "
                                                             "texts (narrate's windows are final), else the job's")

    # (the other training job's key for its extra texts, what to tell a user who gives it here)
    other_jobs_key: ClassVar[tuple[str, str] | None] = None

    @model_validator(mode="before")
    @classmethod
    def _not_the_other_jobs_key(cls, data: Any) -> Any:
        if cls.other_jobs_key and isinstance(data, dict) and cls.other_jobs_key[0] in data:
            raise ValueError(cls.other_jobs_key[1])
        return data

    def window_offset(self, kind: str, job_offset: float) -> float:
        """How far these windows are widened: as set, else not at all for pseudo texts (a narrate
        output's windows were widened when narrated) and like the narrations' for people's."""
        if self.offset_sec is not None:
            return self.offset_sec
        return 0.0 if kind == "pseudo" else job_offset


class TrainingJobConfig(JobConfig):
    """Fields of every training job. A resumed run may be given more epochs, another failure
    budget or checkpoint count (``train.*``); any other change refuses the resume."""

    train_splits: list[str] = ["train"]
    eval_splits: list[str] = ["val", "test"]

    resumable_changes = {"train": {"epochs", "max_failures", "keep_checkpoints"}}


def _best(output: str) -> dict[str, Any] | None:
    """What ``OUTPUT/best`` holds (metric, value, epoch, step), if an evaluation produced one."""
    url = storage.join(output, "best", "best.json")
    return storage.read_json(url) if storage.exists(url) else None


def with_temperature_freezes(options: TrainerOptions, has_pseudo: bool, freeze_temperature: bool,
                             freeze_pseudo_temperature: bool) -> tuple[TrainerOptions, bool]:
    """The options with the dual encoders' temperatures frozen as asked, and whether the pseudo
    temperature τ′ trains: without pseudo pairs it gets no gradient (DDP refuses such parameters)."""
    pseudo = has_pseudo and not freeze_pseudo_temperature
    frozen = (["logit_scale"] if freeze_temperature else []) + ([] if pseudo else ["aux_logit_scale"])
    return options.model_copy(update={"freeze": options.freeze + frozen}), pseudo


@dataclass
class TrainingPlan:
    """A training job, declared before anything runs: the URLs whose change refuses a resume, Ray
    Train's options, the workers' function, and the two steps run once Ray is up: ``pairs()``
    returns ``url`` (the main pairs), ``aux`` (more pair folders) and ``datasets`` for :func:`fit`;
    ``loop(counts)`` the workers' typed config (:class:`~egoray.train.recipe.LoopConfig`) from the
    pairs' counts."""

    inputs: list[str]
    options: TrainerOptions
    train_fn: Callable[[Any], None]
    pairs: Callable[[], dict[str, Any]]
    loop: Callable[[dict[str, Any]], LoopConfig]

    def describe(self) -> list[str]:
        """The plan in lines a person reads (``egoray run --plan``)."""
        o = self.options
        how = f"DeepSpeed ZeRO-{o.zero_stage}" if o.strategy == "deepspeed" else "DDP"
        lines = [f"pairs built per video by Ray Data under _work/, from {len(self.inputs)} input(s): "
                 + ", ".join(self.inputs[:3]) + (" ..." if len(self.inputs) > 3 else ""),
                 f"train with Ray Train: {o.num_workers} worker(s) × {o.cpus_per_worker:g} CPU"
                 f"{' + 1 GPU' if o.use_gpu else ''}, {how}, {o.precision}, workers run {self.train_fn.__name__}",
                 f"  {o.epochs} epoch(s), batches of {o.batch_size} per worker"
                 f"{f' × {o.grad_accum} accumulated' if o.grad_accum > 1 else ''}, lr {o.lr:g} ({o.schedule}), "
                 f"seed {o.seed}" + (f", from {o.init_from}" if o.init_from else ""),
                 "write model/, best/, metrics/, rejects/ and run.json",
                 "resume refused if these inputs or the config change (but for train."
                 + ", train.".join(sorted(TrainingJobConfig.resumable_changes["train"])) + ")"]
        return lines


def run_training(config: JobConfig, overwrite: bool, plan: TrainingPlan) -> dict[str, Any]:
    """Claim the output, build the pairs, train on Ray, export the model and metrics (through
    :func:`egoray.runner.run_lifecycle`); returns ``run.json``. An output written by another
    config or from changed inputs is refused; ``--overwrite`` clears it, checkpoints too."""
    def body(job: JobRun) -> Added:
        return _train(config, plan.options, plan.train_fn, plan.pairs, plan.loop, job)

    return run_lifecycle(config, overwrite, body, inputs=plan.inputs, dashboard=True)


def _train(config: JobConfig, options: TrainerOptions, train_fn: Callable[[Any], None],
           pairs: Callable[[], dict[str, Any]], loop: Callable[[dict[str, Any]], LoopConfig],
           job: JobRun) -> Added:
    from egoray.train.pairs import count_pairs, write_rejects

    manifest = job.manifest
    built = pairs()
    counts = count_pairs(built["url"])
    splits = counts["splits"]
    train_splits = getattr(config, "train_splits", ["train"])
    n_train = sum(v for k, v in splits.items() if k in train_splits)
    n_eval = sum(splits.values()) - n_train
    aux_counts = [count_pairs(u) for u in built["aux"]]
    n_aux = sum(sum(c["splits"].values()) for c in aux_counts)
    info = {"in": counts["total"], "out": sum(splits.values()), "rejected": sum(counts["rejected"].values()),
            "train": n_train, "eval": n_eval, "aux": n_aux,
            "aux_rejected": sum(sum(c["rejected"].values()) for c in aux_counts), "dims": counts["dims"],
            **({"with_paraphrases": counts["with"]["paraphrases"]} if "paraphrases" in counts["with"] else {})}
    print(f"[{config.job}] {n_train} training pairs, {n_eval} held-out, {n_aux} auxiliary "
          f"({info['aux_rejected']} without video), {info['rejected']} rejected", flush=True)
    if n_train // options.num_workers < 2:
        raise InputError(f"{n_train} training items cannot feed {options.num_workers} workers "
                         "(each needs at least 2); add data or lower train.num_workers")
    if info["rejected"]:
        write_rejects(built["url"], config.output)
    result = fit(train_fn, loop(info), options, config.output, built["datasets"])
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    state = fetch_model(result.checkpoint, config.output)
    history = state["history"]
    keys = list(dict.fromkeys(k for row in history for k in row))  # rows differ: every column
    storage.write_parquet(storage.join(config.output, "metrics", "part-0000.parquet"),
                          pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in history]))
    manifest.stages["pairs"] = StageCounts(info["in"], info["out"], info["rejected"])
    trained = sum(h.get("examples") or 0 for h in history)
    manifest.stages["train"] = StageCounts(n_train, n_train, 0, sum(h["examples"] / h["examples_per_s"]
                                                                    for h in history if h.get("examples_per_s")))
    manifest.timings = {"wall_this_run": job.elapsed()}
    manifest.extra.update({
        "reject_reasons": counts["rejected"], "pairs": {k: v for k, v in info.items() if k != "dims"},
        "epochs": state["epoch"], "resumed_from_epoch": state.get("resumed_from", 0),
        "steps": state.get("step"), "steps_per_epoch": state.get("steps_per_epoch"),
        "resumed_from_step": state.get("resumed_from_step", 0), "init_from": state.get("init_from"),
        "initialised": state.get("initialised"), "frozen": state.get("frozen", []),
        "best": _best(config.output),
        "examples_trained": trained, "initial_metrics": history[0],
        "final_metrics": {k: v for k, v in history[-1].items() if v is not None},
        "model": storage.join(config.output, "model", "model.pt")})
    manifest.status = "complete"
    resumed = state.get("resumed_from", 0)
    return Added({}, {"examples_trained": sum(h.get("examples") or 0 for h in history if h.get("epoch", 0) > resumed)})


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------


LOOP_KEY = "loop"  # Ray Train's train_loop_config is a dict: ours is one typed value in it


def _run_loop(train_fn: Callable[[Any], None], config: dict[str, Any]) -> None:
    train_fn(config[LOOP_KEY])


def fit(train_fn: Callable[[Any], None], loop: Any, options: TrainerOptions,
        output: str, datasets: dict[str, Any] | None = None) -> Any:
    """Run ``train_fn(loop)`` on ``options.num_workers`` Ray Train workers (``loop``: the job's
    :class:`~egoray.train.recipe.LoopConfig`); returns the Ray Train Result.

    ``datasets`` are Ray Datasets the workers read with ``ray.train.get_dataset_shard``, each
    whole (:class:`egoray.train.data.OrderedShard` deals a training set's rows).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from egoray.settings import Settings

    backend = options.backend if options.backend != "auto" else ("nccl" if options.use_gpu else "gloo")
    storage_path, filesystem = _storage(output)
    trainer = TorchTrainer(
        functools.partial(_run_loop, train_fn),
        train_loop_config={LOOP_KEY: loop},
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(
            num_workers=options.num_workers, use_gpu=options.use_gpu,
            resources_per_worker={"CPU": options.cpus_per_worker, **({"GPU": 1} if options.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name="train", storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=options.keep_checkpoints),
            worker_runtime_env=Settings.from_environ().runtime_env()),
        datasets=datasets or {},
        # every worker reads every dataset whole: held-out sets all of them, training sets to
        # take its share of the seeded global order (egoray.train.order), which a split by
        # arrival would not keep
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    return trainer.fit()


def _storage(output: str) -> tuple[str, Any]:
    """Ray Train's storage path and filesystem for an output URL (S3 through our s3fs settings)."""
    if "://" not in output or output.startswith("file://"):
        path = output[len("file://"):] if output.startswith("file://") else output
        return os.path.abspath(path), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(output)
    return path, PyFileSystem(FSSpecHandler(fs))


def fetch_model(checkpoint: Any, output: str) -> dict[str, Any]:
    """Copy the exported weights of a Ray Train checkpoint to ``<output>/model/``; returns its client state."""
    with checkpoint.as_directory() as directory:
        with open(os.path.join(directory, MODEL_FILE), "rb") as f:
            storage.write_bytes(storage.join(output, "model", MODEL_FILE), f.read())
        with open(os.path.join(directory, "client_state.json")) as f:
            client_state = json.load(f)
    storage.write_json(storage.join(output, "model", "client_state.json"), client_state)
    return client_state
