"""The trainer's engine on two gloo processes (no Ray): DDP and DeepSpeed ZeRO 0–3, fp32 and bf16,
gradient accumulation, the learning-rate schedule, and checkpoints that resume exactly.

One pair of processes runs every case (DeepSpeed's import is the slow part) and saves the weights
each case ends with; the tests compare them.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from egoray.train.schedule import lr_factor

STEPS = 6
GLOBAL_BATCH = 16
CASES = {  # name: TrainerOptions overrides
    "ddp": {"strategy": "ddp"},
    "ddp_accum2": {"strategy": "ddp", "grad_accum": 2},
    "ddp_bf16": {"strategy": "ddp", "precision": "bf16"},
    **{f"zero{z}": {"strategy": "deepspeed", "zero_stage": z} for z in range(4)},
    **{f"zero{z}_bf16": {"strategy": "deepspeed", "zero_stage": z, "precision": "bf16"} for z in range(4)},
    "zero2_accum2": {"strategy": "deepspeed", "zero_stage": 2, "grad_accum": 2},
    "ddp_cosine": {"strategy": "ddp", "schedule": "cosine", "warmup_steps": 2, "lr_end_ratio": 0.1},
    "zero2_cosine": {"strategy": "deepspeed", "zero_stage": 2, "schedule": "cosine", "warmup_steps": 2,
                     "lr_end_ratio": 0.1},
}
RESUMED = ("ddp_cosine", "zero2_cosine", "zero3")  # also run as: 3 steps, save, new engine, load, 3 steps


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * GLOBAL_BATCH, 8, generator=g)
    return x, x @ torch.randn(8, 1, generator=g) + 0.1


def _train(engine, rank: int, world: int, accum: int, steps: range) -> list[float]:
    """Optimiser steps ``steps`` of a mean-squared-error regression; this rank's slice of each global batch."""
    x, y = _data()
    micro = GLOBAL_BATCH // world // accum
    losses, lrs = [], []
    for s in steps:
        lrs.append(engine.lr)
        rows = torch.arange(s * GLOBAL_BATCH, (s + 1) * GLOBAL_BATCH)[rank::world]
        for m in range(accum):
            idx = rows[m * micro:(m + 1) * micro]
            out = engine(engine.to_input(x[idx]))
            loss = torch.nn.functional.mse_loss(out.float(), y[idx])
            stepped = engine.step(loss)
            assert stepped == (m == accum - 1)
            losses.append(float(loss))
    return lrs


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import tempfile

    import torch.distributed as dist

    from egoray.train.distributed import Engine, TrainerOptions

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)

    def engine_for(overrides: dict) -> tuple[Engine, int]:
        options = TrainerOptions(num_workers=world, lr=0.05, weight_decay=0.1, **overrides)
        micro = GLOBAL_BATCH // world // options.grad_accum
        return Engine(_model(), options, micro, total_steps=STEPS), options.grad_accum

    for name, overrides in CASES.items():
        engine, accum = engine_for(overrides)
        x, y = _data()
        before = float(torch.nn.functional.mse_loss(engine(engine.to_input(x)).float(), y))
        lrs = _train(engine, rank, world, accum, range(STEPS))
        after = float(torch.nn.functional.mse_loss(engine(engine.to_input(x)).float(), y))
        state = engine.full_state_dict()
        torch.save({"state": state, "before": before, "after": after, "lrs": lrs},
                   os.path.join(out_dir, f"{name}.rank{rank}.pt"))
        if name in RESUMED:
            engine, accum = engine_for(overrides)
            _train(engine, rank, world, accum, range(STEPS // 2))
            with tempfile.TemporaryDirectory() as shared:
                box = [shared]
                dist.broadcast_object_list(box, src=0)  # one folder for both ranks' parts
                engine.save(box[0], {"step": STEPS // 2}, {"kind": "test"})
                dist.barrier()
                fresh, _ = engine_for(overrides)
                client = fresh.load(box[0])
                dist.barrier()
            assert client == {"step": STEPS // 2}
            lrs = _train(fresh, rank, world, accum, range(STEPS // 2, STEPS))
            torch.save({"state": fresh.full_state_dict(), "lrs": lrs},
                       os.path.join(out_dir, f"{name}_resumed.rank{rank}.pt"))
        dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("engine")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    names = list(CASES) + [f"{n}_resumed" for n in RESUMED]
    return {n: [torch.load(out / f"{n}.rank{r}.pt", weights_only=True) for r in range(2)] for n in names}


def _close(a: dict, b: dict, tol: float) -> bool:
    return all(torch.allclose(a[k], b[k], atol=tol, rtol=tol) for k in a)


@pytest.mark.parametrize("name", list(CASES))
def test_every_strategy_and_precision_learns_and_keeps_ranks_equal(runs, name):
    r0, r1 = runs[name]
    assert r0["after"] < 0.5 * r0["before"]
    assert _close(r0["state"], r1["state"], 0)  # one model, whatever the sharding


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3"])
def test_zero_stages_in_fp32_take_the_same_steps_as_ddp(runs, name):
    assert _close(runs[name][0]["state"], runs["ddp"][0]["state"], 1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_two_micro_batches_of_half_equal_one_batch(runs, strategy):
    """A mean-over-examples loss: accumulating 2 halves is the same gradient as the whole batch."""
    base = runs[strategy if strategy == "ddp" else "zero2"][0]["state"]
    assert _close(runs[f"{strategy}_accum2"][0]["state"], base, 1e-5)


@pytest.mark.parametrize("name", ["ddp_cosine", "zero2_cosine"])
def test_warmup_then_cosine(runs, name):
    expected = [0.05 * lr_factor("cosine", s, STEPS, 2, 0.1) for s in range(STEPS)]
    assert runs[name][0]["lrs"] == pytest.approx(expected)
    assert expected[0] < expected[1] == pytest.approx(0.05) and expected[-1] < 0.05 * 0.5


def test_constant_schedule_keeps_the_rate(runs):
    assert runs["ddp"][0]["lrs"] == pytest.approx([0.05] * STEPS)


@pytest.mark.parametrize("name", RESUMED)
def test_a_run_saved_mid_way_and_loaded_into_a_new_engine_ends_the_same(runs, name):
    """Weights, optimiser moments and the schedule's position all come back from the checkpoint."""
    assert runs[f"{name}_resumed"][0]["lrs"] == pytest.approx(runs[name][0]["lrs"][STEPS // 2:])
    assert _close(runs[f"{name}_resumed"][0]["state"], runs[name][0]["state"], 1e-6)
