"""``train_narrator`` job: LaViLa's narrator — frozen causal LM + gated cross-attention to video.

Inputs: an ingest output (narrations with splits) and a ``video_features`` output. For each
narration, ``num_frames`` features spread over ``[t_start - offset, t_end + offset]`` are the
video tokens; the LM is trained teacher-forced to produce the narration, and only the attention
pooler and the cross-attention blocks learn. Runs on Ray Train (DeepSpeed ZeRO or DDP) and
resumes from its latest checkpoint. Output::

    OUTPUT/model/model.pt              pooler + cross-attention weights and the narrator config
    OUTPUT/metrics/part-0000.parquet   per-epoch train loss and held-out loss
    OUTPUT/rejects/part-0000.parquet   narrations without video features
    OUTPUT/train/                      Ray Train checkpoints
    OUTPUT/run.json
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import Field

from egoray.config import JobConfig, Url
from egoray.data.narrations import load_narrations
from egoray.data.raw import InputError
from egoray.train.bank import load_bank
from egoray.train.distributed import TrainerOptions
from egoray.train.job import launch, prepare
from egoray.train.narrator import TRAINED_PREFIXES, NarratorConfig
from egoray.train.pairs import resolve_windows


class Config(JobConfig):
    """Config of the ``train_narrator`` job (``input``: an ingest output)."""

    job: Literal["train_narrator"] = "train_narrator"
    video_features: Url
    offset_sec: float = Field(1.0, ge=0)
    train_splits: list[str] = ["train"]
    eval_splits: list[str] = ["val", "test"]
    model: NarratorConfig = NarratorConfig()
    resumable_changes = {"train": {"epochs", "max_failures", "keep_checkpoints"}}
    train: TrainerOptions = TrainerOptions(strategy="ddp", epochs=5, batch_size=16, lr=3e-4)


def build_data(config: Config) -> tuple[dict[str, Any], list[dict], dict[str, int]]:
    bank = load_bank(config.video_features)
    narrations = load_narrations(config.input, config.train_splits + config.eval_splits)
    if narrations.num_rows == 0:
        raise InputError(f"{config.input}: no narrations in splits {config.train_splits + config.eval_splits}")
    w = resolve_windows(narrations, bank, config.offset_sec)
    frames = bank.sample(w.rows, w.t1, w.t2, config.model.num_frames)
    is_train = np.isin(w.split, config.train_splits)
    texts = np.asarray(w.texts, dtype=object)
    data = {"frames": frames[is_train], "texts": list(texts[is_train]),
            "eval_frames": frames[~is_train], "eval_texts": list(texts[~is_train])}
    counts = {"in": narrations.num_rows, "out": len(w.ids), "rejected": len(w.rejects),
              "train": int(is_train.sum()), "eval": int((~is_train).sum())}
    if counts["train"] < 2:
        raise InputError(f"only {counts['train']} training narrations (splits {config.train_splits})")
    return data, w.rejects, counts


def eval_loss(model: Any, frames: np.ndarray, texts: list[str], batch: int = 64) -> float | None:
    """Mean teacher-forced loss per token over held-out narrations."""
    import torch

    if not texts:
        return None
    model.eval()
    param = next(model.pooler.parameters())
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            b = model.tokenize(texts[i:i + batch])
            out = model(torch.from_numpy(frames[i:i + batch]).to(param), b["input_ids"].to(param.device),
                        b["attention_mask"].to(param.device), b["labels"].to(param.device))
            n = int((b["labels"][:, 1:] != -100).sum())
            total += float(out.loss) * n
            tokens += n
    return total / max(tokens, 1)


def _train_loop(loop: dict[str, Any]) -> None:
    import ray
    import ray.train
    import torch

    from egoray.train.distributed import Engine, effective_batch, epoch_batches, report, resume
    from egoray.train.narrator import Narrator

    options = TrainerOptions(**loop["train"])
    torch.manual_seed(options.seed)
    torch.set_num_threads(max(1, int(options.cpus_per_worker)))
    data = ray.get(loop["data"])
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = Narrator(NarratorConfig(**loop["model"]))
    model.set_gradient_checkpointing(options.gradient_checkpointing)
    n = len(data["texts"])
    batch = effective_batch(n, world, options.batch_size)
    engine = Engine(model, options, batch, save_prefixes=TRAINED_PREFIXES)
    state = resume(engine)
    start = int(state.get("epoch", 0))
    history = list(state.get("history", []))
    if start == 0:
        # every rank evaluates: under ZeRO-3 a forward pass gathers weights collectively
        initial = eval_loss(engine.module, data["eval_frames"], data["eval_texts"])
        history.append({"epoch": 0, "loss": None, "eval_loss": initial if rank == 0 else None})
    frames = torch.from_numpy(data["frames"])
    texts = data["texts"]
    export = {"kind": "narrator", "config": loop["model"]}
    for epoch in range(start + 1, options.epochs + 1):
        engine.train()
        t0 = time.perf_counter()
        losses, seen = [], 0
        for idx in epoch_batches(n, batch, rank, world, options.seed, epoch):
            b = model.tokenize([texts[i] for i in idx])
            out = engine(engine.to_input(frames[torch.from_numpy(idx)]), engine.to_input(b["input_ids"]),
                         engine.to_input(b["attention_mask"]), engine.to_input(b["labels"]))
            engine.step(out.loss)
            losses.append(float(out.loss.detach()))
            seen += len(idx)
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None, "examples": seen * world,
                   "examples_per_s": seen * world / max(seconds, 1e-9)}
        with engine.gathered():
            gates = [float(torch.tanh(b.attn_gate.detach().float()).abs().mean()) for b in engine.module.xattn]
            metrics["mean_abs_gate"] = float(np.mean(gates))
        held_out = eval_loss(engine.module, data["eval_frames"], data["eval_texts"])
        if rank == 0:
            metrics["eval_loss"] = held_out
        history.append(metrics)
        if rank == 0:
            print(f"[train_narrator] epoch {epoch}/{options.epochs} loss {metrics['loss']:.4f} "
                  f"eval_loss {metrics.get('eval_loss') or float('nan'):.4f}", flush=True)
        if epoch == options.epochs or epoch % options.checkpoint_every == 0:
            report(engine, {k: v for k, v in metrics.items() if v is not None},
                   {"epoch": epoch, "history": history, "resumed_from": start}, export)
    if start >= options.epochs:  # nothing left to train: re-save, recording that this run resumed
        report(engine, {"epoch": start}, {**state, "resumed_from": start}, export)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    wall0 = time.perf_counter()
    ledger = prepare(config, overwrite)
    data, rejects, counts = build_data(config)
    print(f"[train_narrator] {counts['train']} training narrations, {counts['eval']} held-out, "
          f"{counts['rejected']} rejected", flush=True)
    model = config.model.model_copy(update={"video_dim": int(data["frames"].shape[-1])})
    return launch(config, config.train, ledger, _train_loop, {"model": model.model_dump()}, data, rejects, counts,
                  wall0)
