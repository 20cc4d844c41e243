"""The driver half every training job shares: pairs, Ray Train, export, ``run.json``.

The driver claims the output, has the workers build the pairs (:mod:`egoray.train.data`), takes
their counts, starts Ray Train over the pair datasets, and writes what the rank-0 worker
exported. It never holds a pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from egoray import storage
from egoray.config import JobConfig
from egoray.data.raw import InputError
from egoray.runner import JobRun, run_lifecycle
from egoray.runtime import Added
from egoray.stages.base import StageCounts
from egoray.train.distributed import TrainerOptions, fetch_model, fit


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


def launch(config: JobConfig, overwrite: bool, inputs: list[str], options: TrainerOptions,
           train_fn: Callable[[dict], None], pairs: Callable[[], dict[str, Any]],
           loop: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Claim the output, build the pairs, train on Ray, export the model and metrics (through
    :func:`egoray.runner.run_lifecycle`); returns ``run.json``.

    ``inputs``: URLs whose change refuses a resume (an output written by another config or from
    changed inputs is refused; ``--overwrite`` clears it, checkpoints too). ``pairs()`` (Ray
    running) returns ``url`` (the main pairs), ``aux`` (more pair folders), and ``datasets`` for
    :func:`fit`; ``loop(counts)`` the train loop's config.
    """
    def body(job: JobRun) -> Added:
        return _train(config, options, train_fn, pairs, loop, job)

    return run_lifecycle(config, overwrite, body, inputs=inputs, dashboard=True)


def _train(config: JobConfig, options: TrainerOptions, train_fn: Callable[[dict], None],
           pairs: Callable[[], dict[str, Any]], loop: Callable[[dict[str, Any]], dict[str, Any]],
           job: JobRun) -> Added:
    from egoray.train.data import count_pairs, write_rejects

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
    loop_config = {**loop(info), "train": options.model_dump(), "output": config.output}
    result = fit(train_fn, loop_config, options, config.output, built["datasets"])
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
