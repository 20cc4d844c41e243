"""``train_video_text`` job: LaViLa's video–text dual encoder, trained end to end from frames.

Inputs: an ingest output (narrations with splits) and ``videos``, the folder holding
``<video_uid>.<ext>``. A Ray Data pass on CPU workers decodes each narration's window
``[t_start - offset, t_end + offset]`` into ``model.num_frames`` frames at the visual tower's size
(:class:`egoray.stages.clips.DecodeClips`) into ``OUTPUT/_work/clips``, kept for resumed runs,
and the Ray Train workers stream them. The towers (:mod:`egoray.models.video_text`): an open_clip
ViT over the frames in LaViLa's space–time transformer or frame averaging, and open_clip's or a
transformers text encoder; symmetric InfoNCE (optionally EgoNCE) against the negatives of every
worker. ``aux`` texts of windows (a ``narrate`` output's pseudo-narrations, a ``rephrase``
output's paraphrases) have their clips decoded the same way into ``_work/aux<i>`` and join each
batch as LaViLa mixes them: one InfoNCE over the mixed batch, two pseudo pairs meeting at their
own temperature τ′, two human pairs (paraphrases count as human) at τ, the two kinds at √(ττ′).
Training runs on the shared trainer (:mod:`egoray.train.recipe`: schedules, ZeRO, bf16, gradient
checkpointing, step checkpoints, best model, TensorBoard). Output::

    OUTPUT/model/model.pt              last weights + tower config (``load_video_text``)
    OUTPUT/best/model.pt, best.json    the best held-out t2v R@1
    OUTPUT/metrics/part-0000.parquet   every evaluation: loss, held-out retrieval from raw frames
    OUTPUT/tensorboard/                every scalar
    OUTPUT/rejects/*.parquet           narrations whose video is missing or unreadable
    OUTPUT/train/                      Ray Train checkpoints
    OUTPUT/run.json
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.models.video_text import VideoTextConfig, export_config, load_video_text
from egoray.stages.video import stack_npy
from egoray.train.distributed import TrainerOptions, contrastive
from egoray.train.job import AuxTexts, TrainingJobConfig, TrainingPlan, run_training, with_temperature_freezes
from egoray.train.recipe import LoopConfig, Recipe

__all__ = ["Config", "load_video_text", "run"]

CLIP_COLUMNS = ["id", "text", "frames", "verb_code", "noun_code"]


class AuxWindowTexts(AuxTexts):
    """More texts of windows to train on (LaViLa's ``--metadata-aux``), embedded by the text tower
    as it trains. ``kind`` defaults to pseudo for a narrate output, human for a rephrase output."""

    texts: Url = Field(description="a narrate output (pseudo-narrations), a rephrase output (paraphrases), or a "
                                   "table id, text, video_uid, t_start, t_end")
    other_jobs_key = ("text_features", "text_features is train_dual_encoder's key; train_video_text embeds the "
                                       "texts itself: give texts (a narrate or rephrase output)")


class Augment(StrictModel):
    """LaViLa's training augmentation, drawn per clip per epoch (:mod:`egoray.video.augment`)."""

    per_segment: int = Field(3, ge=1, description="candidate frames kept per segment of a training clip, one drawn "
                                                  "each epoch (LaViLa: any frame of the segment; 1: no jitter)")
    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="RandomResizedCrop's area range (LaViLa 0.5–1)")
    crop_ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop's aspect range")


class Config(TrainingJobConfig):
    """Config of the ``train_video_text`` job (``input``: an ingest output)."""

    job: Literal["train_video_text"] = "train_video_text"
    videos: Url = Field(description="folder of the videos, <video_uid>.<ext>")
    labels: Url | None = Field(None, description="video_uid,t_start,t_end,verb,noun for narrations without them")
    offset_sec: float = Field(1.0, ge=0, description="clip = [t_start - offset, t_end + offset]")
    model: VideoTextConfig = VideoTextConfig()
    egonce: bool = Field(False, description="pairs sharing verb and noun count as positives")
    aux: list[AuxWindowTexts] = []
    augment: Augment | None = Field(Augment(), description="LaViLa's per-epoch temporal jitter and random resized "
                                                           "crop of training clips; none: the centre frames, cropped")
    rephrased: Url | None = Field(
        None, description="a rephrase output: each training clip's text is drawn every epoch from its narration and "
                          "its paraphrases (LaViLa's --metadata with the rephraser's pickle: random.choice per clip)")
    gather_negatives: bool = Field(True, description="contrast against every worker's batch")
    freeze_temperature: bool = Field(False, description="keep the temperature at its initial value")
    freeze_pseudo_temperature: bool = Field(False, description="keep the pseudo pairs' temperature fixed")
    eval_batch_size: int = Field(32, ge=1, description="clips per forward pass in evaluation")
    train: TrainerOptions = TrainerOptions(batch_size=32, lr=3e-5)

    @field_validator("train")
    @classmethod
    def _contrastive_batch(cls, train: TrainerOptions) -> TrainerOptions:
        return contrastive(train)


class VideoTextLoop(LoopConfig):
    """What each worker of train_video_text is given."""

    model: VideoTextConfig
    egonce: bool
    augment: Augment | None
    size: int  # the vision tower's input size (the random resized crop's output)
    n_aux: int
    pseudo: bool
    gather: bool
    eval_batch_size: int


class VideoTextRecipe(Recipe):
    """The video–text towers' part of the shared trainer."""

    name = "train_video_text"
    best_metric = "t2v_R@1"
    best_mode = "max"
    loop: VideoTextLoop

    def build(self) -> Any:
        from egoray.models.video_text import VideoTextModel

        return VideoTextModel(self.loop.model)

    def setup(self, model: Any, options: TrainerOptions) -> None:
        from egoray.stages.pairs import caption_codes
        from egoray.train.data import held_out_batches, ordered_shard

        model.set_gradient_checkpointing(options.gradient_checkpointing)
        self.model, self.options = model, options
        frames, texts, verb, noun = [], [], [], []
        for b in held_out_batches("eval", 256):
            frames += list(b["frames"])  # kept encoded (uint8 .npy): decoded per evaluation batch
            texts += [str(t) for t in b["text"]]
            verb.append(b["verb_code"].astype(np.int64))
            noun.append(b["noun_code"].astype(np.int64))
        self.eval_frames, self.eval_texts = frames, texts
        self.eval_verb = np.concatenate(verb) if verb else np.zeros(0, np.int64)
        self.eval_noun = np.concatenate(noun) if noun else np.zeros(0, np.int64)
        self.eval_captions = caption_codes(texts)
        self.train_rows = ordered_shard("train", options.seed)
        self.n_aux = self.loop.n_aux
        self.aux_rows = ordered_shard("aux", options.seed) if self.n_aux else None

    def batches(self, epoch: int, batch: int, rank: int) -> Any:
        from egoray.train.data import batches_with_aux, choose_texts

        for rows, aux in batches_with_aux(self.train_rows, self.aux_rows, self.n_aux, batch, epoch,
                                          self.options.num_workers):
            rows = choose_texts(rows, self.options.seed, epoch)
            yield self._augmented(rows, epoch), (self._augmented(aux, epoch) if aux is not None else None)

    def _augmented(self, rows: dict[str, Any], epoch: int) -> dict[str, Any]:
        """Each clip's frames for this epoch: a candidate per segment, one random resized crop
        (float [B, T, size, size, 3]); without ``augment`` the stored ones."""
        from egoray.stages.video import from_npy
        from egoray.video.augment import jittered_frames, random_resized_crop

        augment = self.loop.augment
        if augment is None:
            return rows
        seed, frames = self.options.seed, self.loop.model.num_frames
        clips = [random_resized_crop(jittered_frames(from_npy(f), frames, seed, epoch, str(i)), self.loop.size,
                                     tuple(augment.crop_scale), tuple(augment.crop_ratio), seed, epoch, str(i))
                 for f, i in zip(rows["frames"], rows["id"], strict=True)]
        return {**rows, "frames": np.stack(clips)}

    def _tokens(self, engine: Any, texts: list[str]) -> Any:
        tokens = self.model.tokenize(texts)
        if isinstance(tokens, dict):
            return {k: engine.to_input(v) for k, v in tokens.items()}
        return engine.to_input(tokens)

    def loss(self, engine: Any, item: Any) -> tuple[Any, int]:
        import torch

        from egoray.models.dual_encoder import contrastive_loss, pair_scales, same_label
        from egoray.train.distributed import gather_with_grad

        rows, aux = item
        parts = [rows] + ([aux] if aux is not None else [])
        size = len(rows["frames"])
        frames = engine.to_input(self.model.preprocess(np.concatenate([_frames(p["frames"]) for p in parts])))
        texts = [str(t) for p in parts for t in p["text"]]
        ve, te, scale, pseudo_scale = engine(frames, self._tokens(engine, texts))
        verb = torch.from_numpy(np.concatenate([p["verb_code"].astype(np.int64) for p in parts]))
        noun = torch.from_numpy(np.concatenate([p["noun_code"].astype(np.int64) for p in parts]))
        human = torch.ones(len(texts), dtype=torch.bool)
        if aux is not None:
            human[size:] = torch.from_numpy(np.asarray(aux["human"], dtype=bool))
        if self.loop.gather:
            ve, te = gather_with_grad(ve), gather_with_grad(te)
            verb, noun = gather_with_grad(verb), gather_with_grad(noun)
            human = gather_with_grad(human.long()).bool()
        positives = same_label(verb, noun) if self.loop.egonce else None
        # one InfoNCE over the mixed batch, each pair's temperature by kind (LaViLa); with pseudo
        # pairs in the run τ′ is in every step's graph (DDP wants every trained parameter there)
        scales = pair_scales(human, scale.float(), pseudo_scale.float()) if self.loop.pseudo else scale.float()
        return contrastive_loss(ve.float(), te.float(), scales, positives), size

    def evaluate(self, engine: Any) -> dict[str, float]:
        import torch

        from egoray.eval.retrieval import paired_retrieval_metrics

        n = len(self.eval_texts)
        if n == 0:
            return {}
        module = engine.module
        module.eval()
        step = self.loop.eval_batch_size
        v, t = [], []
        with torch.no_grad():
            for i in range(0, n, step):
                frames = engine.to_input(module.preprocess(stack_npy(self.eval_frames[i:i + step])))
                v.append(module.encode_video(frames).float().cpu().numpy())
                t.append(module.encode_text(self._tokens(engine, self.eval_texts[i:i + step])).float().cpu().numpy())
        return paired_retrieval_metrics(np.concatenate(v), np.concatenate(t), self.eval_verb, self.eval_noun,
                                 self.eval_captions)

    def scalars(self, engine: Any) -> dict[str, float]:
        scale, pseudo_scale = engine.module.scales()
        return {"temperature": float(1 / scale.detach().float()),
                "pseudo_temperature": float(1 / pseudo_scale.detach().float())}

    def export(self) -> dict[str, Any]:
        return {"kind": "video_text", "config": export_config(self.loop.model)}


def _frames(column: Any) -> np.ndarray:
    """A batch's clips as one array: augmented ones already are, stored ones are ``.npy`` cells."""
    return column if isinstance(column, np.ndarray) and column.dtype != object else stack_npy(column)


def _train_loop(loop: VideoTextLoop) -> None:
    from egoray.train.recipe import train

    train(VideoTextRecipe(loop), loop)


def plan(config: Config) -> TrainingPlan:
    """The train_video_text job's plan (its inputs checked here, before anything runs)."""
    from egoray.data.videos import video_paths
    from egoray.models.clip import image_size
    from egoray.stages.clips import DecodeClips
    from egoray.train.data import PARAPHRASES, narrations_dataset, window_texts_dataset, with_paraphrases
    from egoray.train.pairs import pairs_dataset
    from egoray.work_inputs import prepare_dataset as prepare_work

    items, inputs = narrations_dataset(config.input, config.train_splits + config.eval_splits)
    if config.rephrased:
        items, rephrased = with_paraphrases(items, config.input, config.rephrased)
        inputs = inputs + rephrased
    aux_sources = [window_texts_dataset(a.texts) for a in config.aux]
    kinds = [a.kind or default for a, (_, _, default) in zip(config.aux, aux_sources, strict=True)]
    videos = video_paths(config.videos) or {}
    if not videos:
        raise InputError(f"{config.videos}: no video files (<video_uid>.mp4, ...)")
    size = image_size(config.model.vision)
    # changed narrations, aux texts or labels make another run: refused like a changed config
    watched = inputs + [u for _, us, _ in aux_sources for u in us]
    claimed = watched + ([config.labels] if config.labels else [])

    augment = config.augment

    def decode(name: str, build: Any, offset: float) -> str:
        aux = name != "clips"  # aux clips train like the training split's
        clips = DecodeClips(videos, config.model.num_frames, size, offset, config.labels,
                            augment_splits=config.train_splits if augment else None,
                            per_segment=augment.per_segment if augment else 1, augment_all=bool(augment) and aux)
        return prepare_work(config.output, name, lambda: build().map_batches(clips, batch_format="pyarrow",
                                                                            batch_size=16))

    def pairs() -> dict[str, Any]:
        url = decode("clips", items, config.offset_sec)
        aux = [decode(f"aux{i}", build, a.window_offset(kind, config.offset_sec))
               for i, (a, (build, _, _), kind) in enumerate(zip(config.aux, aux_sources, kinds, strict=True))]
        datasets = {"train": pairs_dataset(url, config.train_splits, CLIP_COLUMNS + [PARAPHRASES]),
                    "eval": pairs_dataset(url, config.eval_splits, CLIP_COLUMNS)}
        if aux:
            parts = [pairs_dataset(u, [], CLIP_COLUMNS, {"human": kind == "human"}) for u, kind in zip(aux, kinds)]
            datasets["aux"] = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        return {"url": url, "aux": aux, "datasets": datasets}

    def loop(counts: dict[str, Any]) -> VideoTextLoop:  # the runner has refused too few training clips
        return VideoTextLoop(train=options, output=config.output, n_train=counts["train"], model=config.model,
                             egonce=config.egonce, augment=augment, size=size, n_aux=counts["aux"], pseudo=pseudo,
                             gather=config.gather_negatives and config.train.num_workers > 1,
                             eval_batch_size=config.eval_batch_size)

    options, pseudo = with_temperature_freezes(config.train, "pseudo" in kinds, config.freeze_temperature,
                                               config.freeze_pseudo_temperature)
    return TrainingPlan(claimed, options, _train_loop, pairs, loop)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the train_video_text job; returns its run.json."""
    return run_training(config, overwrite, plan(config))
