"""Ray Train plumbing shared by the training jobs: options, the per-worker engine, checkpoints.

The driver side (:func:`egoray.train.job.fit`) builds a ``TorchTrainer`` whose run lives under
``<output>/train`` — Ray Train keeps its checkpoints and its own snapshot there, so running the
same job again on the same output resumes from the latest checkpoint, and a worker that dies
mid-run is replaced and resumed by ``FailureConfig``. The worker side (:class:`Engine`) hides
whether the model runs under DeepSpeed ZeRO or plain DDP.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Literal

import torch
from pydantic import Field

from egoray.config import StrictModel
from egoray.models.checkpoint import MODEL_FILE, load_weights

STATE_TAG = "state"


class TrainerOptions(StrictModel):
    """How training is distributed and scheduled (``train:`` in a training job's config)."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    strategy: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage (deepspeed strategy)")
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on GPU, gloo on CPU")
    max_failures: int = Field(2, ge=-1, description="worker-group restarts before the run fails")
    keep_checkpoints: int = Field(2, ge=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1, description="per worker and micro-batch (contrastive jobs: at least 2)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="after the warmup "
                                                                               "(linear: down to lr_end_ratio)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup, in optimiser steps")
    lr_end_ratio: float = Field(0.0, ge=0, le=1, description="cosine: the last learning rate / lr")
    weight_decay: float = Field(0.01, ge=0, description="not applied to biases, norms, temperatures, gates")
    no_decay_group: bool = Field(True, description="false: every parameter decays (torch's AdamW default)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="AdamW's epsilon")
    grad_clip: float = Field(1.0, ge=0)
    freeze: list[str] = Field([], description="parameter-name prefixes that do not train")
    init_from: str | None = Field(None, description="another training output (or model.pt) to start from")
    seed: int = 0
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (the last is always saved)")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also every this many steps (mid-epoch)")
    eval_every_steps: int | None = Field(None, ge=1, description="also evaluate every this many steps")
    best_metric: str | None = Field(None, description="held-out metric that picks OUTPUT/best (job default)")
    best_mode: Literal["max", "min"] | None = Field(None, description="whether higher or lower is better")
    tensorboard: bool = Field(True, description="TensorBoard event files under OUTPUT/tensorboard")


def contrastive(options: TrainerOptions) -> TrainerOptions:
    """``options`` of a job with a contrastive loss: its batches need other pairs as negatives."""
    if options.batch_size < 2:
        raise ValueError("a contrastive loss needs train.batch_size of at least 2 (the other pairs are its negatives)")
    return options


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


class Engine:
    """A model under DeepSpeed ZeRO or DDP with one optimizer: forward, backward/step, save/load."""

    def __init__(self, model: torch.nn.Module, options: TrainerOptions, micro_batch: int,
                 save_prefixes: tuple[str, ...] | None = None, total_steps: int = 0) -> None:
        """``save_prefixes``: only weights under these names are checkpointed and exported
        (a frozen backbone is loaded from its own files, not copied into every checkpoint).
        ``total_steps``: optimiser steps of the whole run, for the learning-rate schedule."""
        import torch.distributed as dist

        from egoray.train.schedule import param_groups, schedule_fn

        self.options = options
        self.module = model
        self.save_prefixes = save_prefixes
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.device = torch.device("cpu")
        if options.use_gpu and torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("every parameter is frozen: nothing to train")
        optimizer = torch.optim.AdamW(param_groups(model, options.weight_decay, options.no_decay_group), lr=options.lr,
                                      betas=tuple(options.betas), eps=options.eps)
        factor = schedule_fn(options.schedule, total_steps, options.warmup_steps, options.lr_end_ratio)
        self.micro_steps = 0  # micro-batches since the last optimiser step
        if options.strategy == "deepspeed":
            os.environ.setdefault("DS_ACCELERATOR", "cuda" if self.device.type == "cuda" else "cpu")
            import deepspeed

            if self.device.type == "cpu" and os.environ.get("EGORAY_DS_SHM_COMM") != "1":
                # DeepSpeed's CPU shared-memory allreduce is a C++ op compiled on first use (~45 s
                # on 2 cores, per fresh machine); gloo does the same collectives without it.
                deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

            ds_config = {
                "train_micro_batch_size_per_gpu": micro_batch,
                "gradient_accumulation_steps": options.grad_accum,
                "zero_optimization": {"stage": options.zero_stage},
                "zero_allow_untested_optimizer": True,
                "gradient_clipping": options.grad_clip,
                "bf16": {"enabled": options.precision == "bf16"},
                "steps_per_print": 10**9,
                "wall_clock_breakdown": False,
            }
            # DeepSpeed steps the schedule at each accumulation boundary and checkpoints it
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, model_parameters=params, optimizer=optimizer, config=ds_config,
                lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
            self.forward_module = self.engine
        else:
            model.to(self.device)
            self.optimizer = optimizer
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            self.engine = None
            if self.world > 1:
                from torch.nn.parallel import DistributedDataParallel

                self.forward_module = DistributedDataParallel(
                    model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            else:
                self.forward_module = model
        self.dtype = torch.bfloat16 if options.precision == "bf16" else torch.float32

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.engine is None and self.options.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.forward_module(*args, **kwargs)
        return self.forward_module(*args, **kwargs)

    def to_input(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.engine is not None and t.is_floating_point():
            t = t.to(self.dtype)
        return t

    def step(self, loss: torch.Tensor) -> bool:
        """Backward one micro-batch's loss; True when this completed an optimiser step.

        With ``grad_accum`` k the gradients of k micro-batches are averaged before one step (the
        loss is divided by k; DeepSpeed does the same itself), so for a loss that is a mean over
        independent examples k micro-batches of b equal one batch of k·b.
        """
        accum = self.options.grad_accum
        self.micro_steps += 1
        boundary = self.micro_steps == accum
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()
        else:
            import contextlib

            sync = contextlib.nullcontext()
            if not boundary and hasattr(self.forward_module, "no_sync"):
                sync = self.forward_module.no_sync()  # DDP: all-reduce once, at the boundary
            with sync:
                (loss / accum).backward()
            if boundary:
                if self.options.grad_clip:
                    torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad],
                                                   self.options.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        if boundary:
            self.micro_steps = 0
        return boundary

    @property
    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return float(self.scheduler.get_last_lr()[0])

    def _kept(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.save_prefixes is None:
            return state
        return {k: v for k, v in state.items() if k.startswith(self.save_prefixes)}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's (saved) weights in fp32 on CPU (collective under ZeRO-3: call on all ranks)."""
        with self.gathered():
            return {k: v.detach().float().cpu().clone() for k, v in self._kept(self.module.state_dict()).items()}

    def gathered(self) -> Any:
        """Context in which the full weights are readable on every rank (collective under ZeRO-3)."""
        import contextlib

        if self.engine is not None and self.options.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def save(self, directory: str, client_state: dict[str, Any], export: dict[str, Any]) -> None:
        """Write this rank's part of a resumable checkpoint (and rank 0 the exported model)."""
        state = self.full_state_dict()
        if self.engine is not None:
            self.engine.save_checkpoint(directory, tag=STATE_TAG, client_state={"egoray": client_state},
                                        exclude_frozen_parameters=self.save_prefixes is not None)
        elif self.rank == 0:
            torch.save({"model": self._kept(self.module.state_dict()), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "client_state": client_state},
                       os.path.join(directory, "ddp_state.pt"))
        if self.rank == 0:
            torch.save({**export, "state_dict": state}, os.path.join(directory, MODEL_FILE))
            with open(os.path.join(directory, "client_state.json"), "w") as f:
                json.dump(client_state, f)

    def load(self, directory: str) -> dict[str, Any]:
        if self.engine is not None:
            _, client_state = self.engine.load_checkpoint(directory, tag=STATE_TAG,
                                                          load_module_strict=self.save_prefixes is None)
            # DeepSpeed hands back its own bookkeeping too; ours sits under one key
            return dict((client_state or {}).get("egoray", {}))
        blob = load_weights(os.path.join(directory, "ddp_state.pt"), "ddp_state.pt", self.device)
        self.module.load_state_dict(blob["model"], strict=self.save_prefixes is None)
        self.optimizer.load_state_dict(blob["optimizer"])
        if "scheduler" in blob:
            self.scheduler.load_state_dict(blob["scheduler"])
        return dict(blob["client_state"])

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()


def resume(engine: Engine) -> dict[str, Any]:
    """Load Ray Train's latest checkpoint into ``engine`` if there is one; its client state or {}."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        return engine.load(directory)


def report(engine: Engine, metrics: dict[str, Any], client_state: dict[str, Any] | None,
           export: dict[str, Any] | None = None) -> None:
    """``ray.train.report`` from every rank; with ``client_state``, a checkpoint too."""
    import ray.train

    if client_state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        engine.save(directory, client_state, export or {})
        has_files = any(os.scandir(directory))
        checkpoint = ray.train.Checkpoint.from_directory(directory) if has_files else None
        ray.train.report(metrics, checkpoint=checkpoint)


def effective_batch(n_train: int, world: int, batch: int) -> int:
    """The per-worker batch, shrunk for tiny datasets so that each epoch has at least one step."""
    per_rank = n_train // world
    if per_rank < 2:
        raise ValueError(f"{n_train} training items cannot feed {world} workers (need ≥ 2 each)")
    return min(batch, per_rank)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks, keeping gradients to the local part (more negatives)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)
