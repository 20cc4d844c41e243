"""The driver half every training job shares: plan, run Ray Train, export, write run.json."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from egoray import storage
from egoray.config import JobConfig
from egoray.data.schema import REJECTS
from egoray.runtime import RunManifest, ShardLedger, StageCounts, ensure_ray
from egoray.train.distributed import TrainerOptions, fetch_model, fit
from egoray.train.pairs import reason_counts


def prepare(config: JobConfig, overwrite: bool) -> ShardLedger:
    """Refuse an output written by another config (``--overwrite`` clears it, checkpoints too)."""
    ledger = ShardLedger(config.output)
    ledger.prepare(config, ["train"], overwrite=overwrite)
    return ledger


def launch(config: JobConfig, options: TrainerOptions, ledger: ShardLedger, train_fn: Callable[[dict], None],
           loop: dict[str, Any], data: dict[str, Any], rejects: list[dict], counts: dict[str, int],
           wall0: float) -> dict[str, Any]:
    """Train on Ray (``data`` goes to the object store once), then export the model and metrics."""
    if counts["train"] // options.num_workers < 2:
        from egoray.data.raw import InputError

        raise InputError(f"{counts['train']} training items cannot feed {options.num_workers} workers "
                         "(each needs at least 2); add data or lower train.num_workers")
    started = ensure_ray(config.ray, dashboard=True)
    try:
        import ray

        result = fit(train_fn, {**loop, "data": ray.put(data), "train": options.model_dump()}, options,
                     config.output)
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    state = fetch_model(result.checkpoint, config.output)
    history = state["history"]
    storage.write_parquet(storage.join(config.output, "metrics", "part-0000.parquet"), pa.Table.from_pylist(history))
    storage.write_parquet(ledger.table_url("rejects", "0000"), pa.Table.from_pylist(rejects, schema=REJECTS))
    manifest = RunManifest.start(config)
    manifest.stages["pairs"] = StageCounts(counts["in"], counts["out"], counts["rejected"])
    trained = sum(h.get("examples") or 0 for h in history)
    manifest.stages["train"] = StageCounts(counts["train"], counts["train"], 0,
                                           sum(h["examples"] / h["examples_per_s"] for h in history
                                               if h.get("examples_per_s")))
    manifest.timings = {"wall_this_run": time.perf_counter() - wall0}
    manifest.extra.update({
        "reject_reasons": reason_counts(rejects), "pairs": counts, "epochs": state["epoch"],
        "resumed_from_epoch": state.get("resumed_from", 0), "examples_trained": trained,
        "initial_metrics": history[0], "final_metrics": {k: v for k, v in history[-1].items() if v is not None},
        "model": storage.join(config.output, "model", "model.pt")})
    manifest.status = "complete"
    manifest.write()
    from egoray.metrics import record

    resumed = state.get("resumed_from", 0)
    record(config.job, {}, {"examples_trained": sum(h.get("examples") or 0 for h in history
                                                     if h.get("epoch", 0) > resumed)})
    return manifest.to_dict()
