"""``train_narrator`` job: LaViLa's narrator — frozen causal LM + gated cross-attention to video.

Inputs: an ingest output (narrations with splits) and either a ``video_features`` output or a
``tower`` — a ``train_video_text`` output — with ``videos``. With features, ``num_frames``
features spread over each narration's ``[t_start - offset, t_end + offset]`` are the video
tokens, sampled by a Ray Data pass grouped by video into ``_work/pairs``. With a tower (LaViLa's
narrator), Ray Data CPU workers decode the window's frames at the tower's size into
``_work/clips``, and the narrator attends to the frozen tower's space–time tokens; it starts from
the tower's run (``train.init_from``), whose video tower it exports with its own weights. Either
way the rows stream to the Ray Train workers; the LM is trained teacher-forced to produce the
narration, and only the attention pooler and the cross-attention blocks learn. Runs on Ray Train (DeepSpeed ZeRO or DDP)
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

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from egoray.config import Url
from egoray.data.raw import InputError
from egoray.models.narrator import NarratorConfig, saved_prefixes
from egoray.stages.video import stack_npy
from egoray.train.distributed import TrainerOptions
from egoray.train.job import TrainingJobConfig, TrainingPlan, run_training
from egoray.train.recipe import LoopConfig, Recipe


class Config(TrainingJobConfig):
    """Config of the ``train_narrator`` job (``input``: an ingest output)."""

    job: Literal["train_narrator"] = "train_narrator"
    video_features: Url | None = Field(None, description="video tokens from these stored features, or:")
    tower: Url | None = Field(None, description="a train_video_text output (or its best/): its frozen video tower's "
                                                "tokens over frames decoded from `videos`")
    videos: Url | None = Field(None, description="with tower: the folder holding <video_uid>.<ext>")
    offset_sec: float = Field(1.0, ge=0)
    model: NarratorConfig = NarratorConfig()
    train: TrainerOptions = TrainerOptions(strategy="ddp", epochs=5, batch_size=16, lr=3e-4)

    @model_validator(mode="after")
    def _one_visual_input(self) -> Config:
        if bool(self.video_features) == bool(self.tower):
            raise ValueError("set exactly one of video_features (stored features) and tower (a train_video_text run)")
        if self.tower and not self.videos:
            raise ValueError("tower needs videos (the folder of the videos its frames are decoded from)")
        if self.tower and self.train.init_from not in (None, self.tower):
            raise ValueError(f"with tower the narrator starts from the tower's run (train.init_from: {self.tower})")
        return self


def eval_set(batches: Any) -> tuple[np.ndarray, list[str]]:
    """Every held-out (frames, text), from its batches (numpy format)."""
    frames, texts = [], []
    for b in batches:
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
            out = model(model.prepare(frames[i:i + batch]).to(param), b["input_ids"].to(param.device),
                        b["attention_mask"].to(param.device), b["labels"].to(param.device))
            n = int((b["labels"][:, 1:] != -100).sum())
            total += float(out.loss) * n
            tokens += n
    return total / max(tokens, 1)


class NarratorLoop(LoopConfig):
    """What each worker of train_narrator is given."""

    model: NarratorConfig  # with the features' width (0: frames through the tower)


class NarratorRecipe(Recipe):
    """The narrator's part of the shared trainer: teacher-forced captioning of the windows."""

    name = "train_narrator"
    best_metric = "eval_loss"
    best_mode = "min"
    loop: NarratorLoop

    def __init__(self, loop: NarratorLoop) -> None:
        super().__init__(loop)
        self.save_prefixes = saved_prefixes(loop.model)

    def build(self) -> Any:
        from egoray.models.narrator import Narrator

        return Narrator(self.loop.model)

    def setup(self, model: Any, options: TrainerOptions) -> None:
        from egoray.train.data import held_out_batches, ordered_shard

        model.set_gradient_checkpointing(options.gradient_checkpointing)
        self.model, self.options = model, options
        self.eval_frames, self.eval_texts = eval_set(held_out_batches("eval", 1024))
        self.train_rows = ordered_shard("train", options.seed)

    def batches(self, epoch: int, batch: int, rank: int) -> Any:
        return self.train_rows.batches(epoch, batch)

    def loss(self, engine: Any, rows: Any) -> tuple[Any, int]:
        b = self.model.tokenize([str(t) for t in rows["text"]])
        frames = self.model.prepare(stack_npy(rows["frames"]))
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
        return {"kind": "narrator", "config": self.loop.model.model_dump()}


def _train_loop(loop: NarratorLoop) -> None:
    from egoray.train.recipe import train

    train(NarratorRecipe(loop), loop)


def plan(config: Config) -> TrainingPlan:
    """The train_narrator job's plan (its inputs checked here, before anything runs)."""
    from egoray.train.data import narrations_dataset
    from egoray.train.pairs import build_pairs, check_video_features, pairs_dataset

    items, inputs = narrations_dataset(config.input, config.train_splits + config.eval_splits)
    model, options, watched = config.model, config.train, inputs
    if config.tower:
        from egoray.models.checkpoint import exported_path

        tower = _tower_config(config.tower)
        # the tower sees the frames it was trained on: its own frame count
        model = model.model_copy(update={"tower": tower, "num_frames": tower.num_frames, "video_dim": 0})
        options = options.model_copy(update={"init_from": config.tower})
        watched = inputs + [exported_path(config.tower)]  # another tower: another run
    else:
        watched = inputs + [check_video_features(config.video_features)]
    # changed narrations or features make another run: refused like a changed config
    columns = ["id", "text", "frames"]

    def pairs() -> dict[str, Any]:
        if config.tower:
            url = _decode_clips(config, model.tower, items)
        else:
            url = build_pairs(config.output, "pairs", items, config.video_features, config.offset_sec,
                              num_frames=model.num_frames)
        return {"url": url, "aux": [],
                "datasets": {"train": pairs_dataset(url, config.train_splits, columns),
                             "eval": pairs_dataset(url, config.eval_splits, columns)}}

    def loop(counts: dict[str, Any]) -> NarratorLoop:  # the runner has refused too few training items
        width = 0 if config.tower else _feature_dim(config.video_features)
        return NarratorLoop(train=options, output=config.output, n_train=counts["train"],
                            model=model.model_copy(update={"video_dim": width}))

    return TrainingPlan(watched, options, _train_loop, pairs, loop)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the train_narrator job; returns its run.json."""
    return run_training(config, overwrite, plan(config))


def _tower_config(url: str) -> Any:
    """The video tower's config from a ``train_video_text`` export (its weights come by init_from)."""
    from egoray.models.checkpoint import load_exported_kind
    from egoray.models.video_text import VideoTextConfig

    return VideoTextConfig(**load_exported_kind(url, "video_text", "a train_video_text model")["config"])


def _decode_clips(config: Config, tower: Any, items: Any) -> str:
    """``_work/clips``: each narration's window decoded to the tower's frames by Ray Data workers."""
    from egoray.data.videos import video_paths
    from egoray.models.clip import image_size
    from egoray.stages.clips import DecodeClips
    from egoray.work_inputs import prepare_dataset as prepare_work

    videos = video_paths(config.videos) or {}
    if not videos:
        raise InputError(f"{config.videos}: no video files (<video_uid>.mp4, ...)")
    decode = DecodeClips(videos, tower.num_frames, image_size(tower.vision), config.offset_sec)
    return prepare_work(config.output, "clips", lambda: items().map_batches(decode, batch_format="pyarrow",
                                                                             batch_size=16))


def _feature_dim(url: str) -> int:
    """The width of the video features (from their index: no features are read)."""
    from egoray import storage

    index = storage.read_parquet(storage.join(url, "index"), columns=["dim"])
    if index.num_rows == 0:
        raise InputError(f"{url}: the feature index is empty")
    return int(index["dim"][0].as_py())
