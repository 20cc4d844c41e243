"""The training skeleton every recipe shares (torchtune style): setup, train, evaluate, save.

A recipe says what is particular to one model — how to build it, read its held-out set, turn a
batch into a loss, and evaluate — and :func:`train` (run on each Ray Train worker) does the
rest the same way for every job:

- the optimiser with a no-weight-decay group, the learning-rate schedule, gradient
  accumulation, frozen parameters and ``init_from`` (:mod:`egoray.train.schedule`, :class:`Engine`);
- checkpoints every few epochs and/or every few optimiser steps; a run resumed from a
  mid-epoch checkpoint skips the micro-batches that epoch already trained on;
- evaluation at the end of every epoch and every ``eval_every_steps``; the best evaluation by the
  recipe's metric is exported to ``OUTPUT/best`` next to the last (``OUTPUT/model``);
- every scalar to TensorBoard (``OUTPUT/tensorboard``).

Steps count optimiser steps. All ranks take the same number of them: the pair datasets are
split into equal shards and each epoch stops after ``steps_per_epoch`` on every rank.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from egoray import storage
from egoray.data.seeds import row_seed
from egoray.train.distributed import Engine, TrainerOptions, effective_batch, report, resume
from egoray.train.tensorboard import ScalarLog

BEST_FOLDER = "best"


class LoopConfig(BaseModel):
    """What every training worker is given, typed: a job's recipe adds its own fields (its model's
    config, counts the driver took) in a subclass. Built and checked on the driver; Ray Train
    hands the same object to each worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: TrainerOptions
    output: str = Field(description="the job's output URL (best/, tensorboard/ are written under it)")
    n_train: int = Field(ge=1, description="training items, as the driver counted them")


class Recipe:
    """What one training job adds to the skeleton. Subclasses set ``name``, ``export`` and
    ``best_metric``/``best_mode`` and implement the methods below."""

    name = "train"
    best_metric = "loss"
    best_mode = "min"
    save_prefixes: tuple[str, ...] | None = None

    def __init__(self, loop: LoopConfig) -> None:
        self.loop = loop

    def build(self) -> torch.nn.Module:
        """The model, on CPU, before any weights are loaded."""
        raise NotImplementedError

    def setup(self, model: torch.nn.Module, options: TrainerOptions) -> None:
        """Read the held-out set and anything else the worker needs once."""

    def batches(self, epoch: int, batch: int, rank: int) -> Iterator[Any]:
        """This worker's training micro-batches of one epoch (its shard, shuffled per epoch)."""
        raise NotImplementedError

    def loss(self, engine: Engine, batch: Any) -> tuple[torch.Tensor, int]:
        """Forward one micro-batch: the loss to backward and the number of examples."""
        raise NotImplementedError

    def evaluate(self, engine: Engine) -> dict[str, float]:
        """Held-out metrics. Called on every rank (ZeRO-3 gathers weights collectively)."""
        return {}

    def scalars(self, engine: Engine) -> dict[str, float]:
        """Model state worth a curve (temperatures, gates), read inside ``engine.gathered()``."""
        return {}

    def after_step(self, engine: Engine) -> None:
        """Called after each optimiser step (e.g. to clamp a parameter in place)."""

    def export(self) -> dict[str, Any]:
        """What the exported ``model.pt`` holds besides the weights (kind, config)."""
        raise NotImplementedError


def init_weights(model: torch.nn.Module, url: str) -> dict[str, int]:
    """Load another run's exported weights where names and shapes match (``init_from``).

    Returns how many tensors were loaded and skipped; an export sharing no tensor is an error.
    """
    from egoray.data.raw import InputError
    from egoray.models.checkpoint import load_exported

    blob = load_exported(url)
    own = model.state_dict()
    theirs = blob.get("state_dict", {})
    usable = {k: v for k, v in theirs.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not usable:
        raise InputError(f"init_from {url}: its {blob.get('kind')!r} model shares no weights with this one")
    model.load_state_dict(usable, strict=False)
    return {"loaded": len(usable), "skipped": len(theirs) - len(usable), "missing": len(own) - len(usable)}


def _better(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or value != value:
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (decisions that lead to collectives must match)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train(recipe: Recipe, loop: LoopConfig) -> None:
    """One Ray Train worker's whole run."""
    import ray.train

    from egoray.train.schedule import freeze

    options = loop.train
    torch.manual_seed(options.seed)
    torch.set_num_threads(max(1, int(options.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = recipe.build()
    initialised = init_weights(model, options.init_from) if options.init_from else None
    frozen = freeze(model, options.freeze)
    recipe.setup(model, options)
    batch = effective_batch(loop.n_train, world, options.batch_size)
    steps_per_epoch = (loop.n_train // world // batch) // options.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"{loop.n_train} training items give {world} workers no full step of "
                         f"{options.grad_accum} micro-batches of {batch}; lower train.grad_accum")
    engine = Engine(model, options, batch, recipe.save_prefixes, total_steps=steps_per_epoch * options.epochs)
    state = resume(engine)
    epochs_done = int(state.get("epoch", 0))
    step_in_epoch = int(state.get("step_in_epoch", 0))
    step = int(state.get("step", epochs_done * steps_per_epoch + step_in_epoch))
    history = list(state.get("history", []))
    resumed_from = {"epoch": epochs_done, "step": step}
    metric = options.best_metric or recipe.best_metric
    mode = options.best_mode or recipe.best_mode
    best = _read_best(loop.output, metric)
    # events of steps after the resume point were written by a run that did not checkpoint them
    log = ScalarLog(loop.output, enabled=options.tensorboard and rank == 0, purge_step=step + 1 if step else None)
    export = recipe.export()

    def client_state(epoch: int, in_epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "step_in_epoch": in_epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                "history": history, "resumed_from": epochs_done, "resumed_from_step": resumed_from["step"],
                "init_from": options.init_from, "initialised": initialised, "frozen": frozen}

    def evaluate(epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        nonlocal best
        held_out = recipe.evaluate(engine)  # every rank (see Recipe.evaluate)
        with engine.gathered():
            scalars = recipe.scalars(engine)
        row = {"epoch": epoch, "step": step, **extra, **scalars, **(held_out if rank == 0 else {})}
        log.add(step, held_out, "eval/")
        log.add(step, scalars, "model/")
        if _agree(_better(row.get(metric), best, mode)):
            best = _agree(row.get(metric))
            _save_best(engine, loop.output, export, {"metric": metric, "mode": mode, "value": best,
                                                        "epoch": epoch, "step": step}, rank)
        history.append(row)
        log.flush()
        return row

    if step == 0:
        evaluate(0, {"loss": None})
    for epoch in range(epochs_done + 1, options.epochs + 1):
        engine.train()
        t0 = time.perf_counter()
        skip = step_in_epoch * options.grad_accum  # micro-batches a mid-epoch checkpoint already trained
        limit = steps_per_epoch * options.grad_accum
        losses: list[float] = []
        seen = 0
        for i, b in enumerate(recipe.batches(epoch, batch, rank)):
            if i >= limit:
                break
            if i < skip:
                continue
            # dropout and any other draw of a micro-batch come from its own seed, not from how many
            # draws came before: a run resumed mid-epoch draws what an uninterrupted one does
            torch.manual_seed(row_seed(options.seed, "micro-batch", rank, epoch, i))
            loss, n = recipe.loss(engine, b)
            stepped = engine.step(loss)
            losses.append(float(loss.detach()))
            seen += n
            if not stepped:
                continue
            recipe.after_step(engine)
            step += 1
            step_in_epoch += 1
            log.add(step, {"loss": losses[-1], "lr": engine.lr}, "train/")
            if step_in_epoch == steps_per_epoch:
                break
            if options.eval_every_steps and step % options.eval_every_steps == 0:
                evaluate(epoch, {"loss": float(np.mean(losses))})
                engine.train()
            if options.checkpoint_every_steps and step % options.checkpoint_every_steps == 0:
                log.flush()
                report(engine, {"step": step}, client_state(epoch - 1, step_in_epoch), export)
        if step_in_epoch != steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} gave {step_in_epoch} of {steps_per_epoch} steps on rank {rank}")
        seconds = time.perf_counter() - t0
        row = evaluate(epoch, {"loss": float(np.mean(losses)) if losses else None, "examples": seen * world,
                               "examples_per_s": seen * world / max(seconds, 1e-9), "lr": engine.lr,
                               "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        log.add(step, {"examples_per_s": row["examples_per_s"]}, "train/")
        if rank == 0:
            shown = {k: round(v, 4) for k, v in row.items()
                     if k in ("loss", metric, "examples_per_s") and isinstance(v, float)}
            print(f"[{recipe.name}] epoch {epoch}/{options.epochs} step {step} {shown}", flush=True)
        step_in_epoch = 0
        by_steps = bool(options.checkpoint_every_steps) and step % (options.checkpoint_every_steps or 1) == 0
        if epoch == options.epochs or epoch % options.checkpoint_every == 0 or by_steps:
            # reporting is a synchronising round trip to the controller: only with a checkpoint
            log.flush()
            report(engine, {k: v for k, v in row.items() if isinstance(v, int | float)},
                   client_state(epoch, 0), export)
    if epochs_done >= options.epochs:  # nothing left to train: re-save, recording that this run resumed
        report(engine, {"epoch": epochs_done}, {**state, "resumed_from": epochs_done,
                                                "resumed_from_step": step}, export)
    log.close()


def _read_best(output: str, metric: str) -> float | None:
    """The best value so far (of an earlier, interrupted run of this job), if it used ``metric``."""
    url = storage.join(output, BEST_FOLDER, "best.json")
    if not storage.exists(url):
        return None
    found = json.loads(storage.read_bytes(url))
    return found["value"] if found.get("metric") == metric else None


def _save_best(engine: Engine, output: str, export: dict[str, Any], best: dict[str, Any], rank: int) -> None:
    """Export the current weights to ``OUTPUT/best`` (collective under ZeRO-3; rank 0 writes)."""
    import io

    from egoray.models.checkpoint import MODEL_FILE

    state = engine.full_state_dict()
    if rank != 0:
        return
    buffer = io.BytesIO()
    torch.save({**export, "state_dict": state, "best": best}, buffer)
    storage.write_bytes(storage.join(output, BEST_FOLDER, MODEL_FILE), buffer.getvalue())
    storage.write_json(storage.join(output, BEST_FOLDER, "best.json"), best)
