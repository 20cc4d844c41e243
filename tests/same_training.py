"""Two training runs of one config on the same inputs: the same evaluations and the same weights."""

from __future__ import annotations

from pathlib import Path

import torch

from egoray import storage
from egoray.models.checkpoint import load_exported

# what a run measures about itself rather than about the model
TIMING = ("examples_per_s", "worker_peak_rss_mb")


def assert_same_training(a: Path, b: Path, resumed_epoch: int | None = None) -> None:
    """Every evaluation equal and every exported tensor bit-identical (``model`` and ``best``).

    ``resumed_epoch``: the epoch ``a`` resumed in the middle of, whose training loss and example
    count cover only the batches after the resume point (its evaluations are whole)."""
    ma, mb = (storage.read_parquet(str(p / "metrics")).to_pylist() for p in (a, b))
    assert len(ma) == len(mb)
    for ra, rb in zip(ma, mb, strict=True):
        partial = ("loss", "examples") if ra["epoch"] == resumed_epoch and ra.get("examples") else ()
        differ = {k: (ra.get(k), rb.get(k)) for k in {*ra, *rb} - {*TIMING, *partial} if ra.get(k) != rb.get(k)}
        assert not differ, f"evaluation at step {ra['step']}: {differ}"
    for folder in ("model", "best"):
        sa, sb = (load_exported(str(p / folder))["state_dict"] for p in (a, b))
        assert sa.keys() == sb.keys() and sa
        differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not differ, f"{folder}: {len(differ)} of {len(sa)} tensors differ, e.g. {differ[:3]}"


def train_again(out: Path, elsewhere: Path) -> dict:
    """The training job of ``out`` run again from its recorded config, into ``elsewhere``."""
    import json

    from egoray.pipelines import job_module, validate_config

    config = json.loads((out / "run.json").read_text())["config"]
    config = validate_config({**config, "output": str(elsewhere)})
    return job_module(config.job).run(config)
