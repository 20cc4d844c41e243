"""``train_narrator`` job: LaViLa's narrator — frozen causal LM + gated cross-attention to video.

Inputs: an ingest output (narrations with splits) and a ``video_features`` output. For each
narration, ``num_frames`` features spread over ``[t_start - offset, t_end + offset]`` are the
video tokens, sampled by a Ray Data pass grouped by video into ``_work/pairs`` and streamed to
the Ray Train workers; the LM is trained teacher-forced to produce the narration, and only the
attention pooler and the cross-attention blocks learn. Runs on Ray Train (DeepSpeed ZeRO or DDP)
and resumes from its latest checkpoint. Output::

    OUTPUT/model/model.pt              pooler + cross-attention weights and the narrator config (last)
    OUTPUT/best/model.pt, best.json    the weights with the lowest held-out loss (train.best_metric)
    OUTPUT/metrics/part-0000.parquet   every evaluation's train loss and held-out loss
    OUTPUT/tensorboard/                every scalar, for ``tensorboard --logdir OUTPUT``
    OUTPUT/rejects/*.parquet           narrations without video features
    OUTPUT/train/                      Ray Train checkpoints
    OUTPUT/run.json
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from egoray.config import JobConfig, Url
from egoray.data.raw import InputError
from egoray.models.narrator import TRAINED_PREFIXES, NarratorConfig
from egoray.stages.video import stack_npy
from egoray.train.distributed import TrainerOptions
from egoray.train.job import launch, prepare
from egoray.train.recipe import Recipe


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


def eval_set(shard: Any) -> tuple[np.ndarray, list[str]]:
    """Every held-out (frames, text), read by each worker."""
    frames, texts = [], []
    for b in shard.iter_batches(batch_size=1024, batch_format="numpy"):
        frames.append(stack_npy(b["frames"]))
        texts += [str(t) for t in b["text"]]
    return (np.concatenate(frames) if frames else np.zeros((0, 1, 1), np.float32)), texts


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


class NarratorRecipe(Recipe):
    """The narrator's part of the shared trainer: teacher-forced captioning of the windows."""

    name = "train_narrator"
    best_metric = "eval_loss"
    best_mode = "min"
    save_prefixes = TRAINED_PREFIXES

    def build(self) -> Any:
        from egoray.models.narrator import Narrator

        return Narrator(NarratorConfig(**self.loop["model"]))

    def setup(self, model: Any, options: TrainerOptions) -> None:
        import ray.train

        model.set_gradient_checkpointing(options.gradient_checkpointing)
        self.model, self.options = model, options
        self.eval_frames, self.eval_texts = eval_set(ray.train.get_dataset_shard("eval"))
        self.train_shard = ray.train.get_dataset_shard("train")

    def batches(self, epoch: int, batch: int, rank: int) -> Any:
        return self.train_shard.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True,
                                             local_shuffle_buffer_size=8 * batch,
                                             local_shuffle_seed=self.options.seed * 100_003 + epoch * 31 + rank)

    def loss(self, engine: Any, rows: Any) -> tuple[Any, int]:
        import torch

        b = self.model.tokenize([str(t) for t in rows["text"]])
        frames = torch.from_numpy(stack_npy(rows["frames"]))
        out = engine(engine.to_input(frames), engine.to_input(b["input_ids"]),
                     engine.to_input(b["attention_mask"]), engine.to_input(b["labels"]))
        return out.loss, len(frames)

    def evaluate(self, engine: Any) -> dict[str, float]:
        held_out = eval_loss(engine.module, self.eval_frames, self.eval_texts)
        return {} if held_out is None else {"eval_loss": held_out}

    def scalars(self, engine: Any) -> dict[str, float]:
        import torch

        gates = [float(torch.tanh(b.attn_gate.detach().float()).abs().mean()) for b in engine.module.xattn]
        return {"mean_abs_gate": float(np.mean(gates))}

    def export(self) -> dict[str, Any]:
        return {"kind": "narrator", "config": self.loop["model"]}


def _train_loop(loop: dict[str, Any]) -> None:
    from egoray.train.recipe import train

    train(NarratorRecipe(loop), loop)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    from egoray.train.data import build_pairs, narrations_dataset, pairs_dataset

    wall0 = time.perf_counter()
    items, inputs = narrations_dataset(config.input, config.train_splits + config.eval_splits)
    from egoray import storage

    # changed narrations or features make another run: refused like a changed config
    ledger = prepare(config, overwrite, inputs + [storage.join(config.video_features, "index")])
    columns = ["id", "text", "frames"]

    def pairs() -> dict[str, Any]:
        url = build_pairs(config.output, "pairs", items, config.video_features, config.offset_sec,
                          num_frames=config.model.num_frames)
        return {"url": url, "aux": [], "split": ["train"],
                "datasets": {"train": pairs_dataset(url, config.train_splits, columns),
                             "eval": pairs_dataset(url, config.eval_splits, columns)}}

    def loop(counts: dict[str, Any]) -> dict[str, Any]:
        if counts["train"] < 2:
            raise InputError(f"only {counts['train']} training narrations (splits {config.train_splits})")
        width = _feature_dim(config.video_features)
        model = config.model.model_copy(update={"video_dim": width})
        return {"model": model.model_dump(), "n_train": counts["train"]}

    return launch(config, config.train, ledger, _train_loop, pairs, loop, wall0)


def _feature_dim(url: str) -> int:
    """The width of the video features (from their index: no features are read)."""
    from egoray import storage

    index = storage.read_parquet(storage.join(url, "index"), columns=["dim"])
    if index.num_rows == 0:
        raise InputError(f"{url}: the feature index is empty")
    return int(index["dim"][0].as_py())
