"""``train_dual_encoder`` job: CLIP-style projection heads over precomputed video and text features.

Inputs: an ingest output (narrations with splits), a ``video_features`` output (per-time-step
features of whole videos) and a ``text_features`` output over the same narrations (it carries
each narration's video, times and split). Each training pair is a narration's text embedding and
the mean video feature of a window around it, built by a Ray Data pass grouped by video (each
video's features read once) into ``_work/pairs`` and streamed to the Ray Train workers; the loss
is symmetric InfoNCE with a learnable temperature (clamped to ≤ 100), optionally EgoNCE (extra
positives sharing verb and noun). Auxiliary pairs (rephrased / narrator texts of the same
windows) join each batch as LaViLa mixes them: one InfoNCE over the mixed batch where two pseudo
pairs meet at their own temperature τ′, two human pairs at τ, and the two kinds at √(ττ′).
Training runs on the shared trainer (:mod:`egoray.train.recipe`) on Ray Train (DeepSpeed ZeRO
or DDP) and resumes from its latest checkpoint. Output::

    OUTPUT/model/model.pt              last weights + head config (``load_dual_encoder``)
    OUTPUT/best/model.pt, best.json    the best evaluation by train.best_metric (t2v_R@1)
    OUTPUT/metrics/part-0000.parquet   every evaluation's loss and held-out retrieval metrics
    OUTPUT/tensorboard/                every scalar, for ``tensorboard --logdir OUTPUT``
    OUTPUT/rejects/*.parquet           narrations without video features
    OUTPUT/train/                      Ray Train checkpoints
    OUTPUT/run.json
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from egoray.config import Url
from egoray.eval.retrieval import paired_retrieval_metrics
from egoray.models.dual_encoder import DualEncoder, DualEncoderConfig, load_dual_encoder
from egoray.stages.pairs import caption_codes
from egoray.train.distributed import TrainerOptions, contrastive
from egoray.train.job import AuxTexts, TrainingJobConfig, TrainingPlan, run_training, with_temperature_freezes
from egoray.train.recipe import LoopConfig, Recipe

__all__ = ["AuxSource", "Config", "evaluate", "load_dual_encoder", "run"]

PAIR_COLUMNS = ["id", "text", "video", "embedding", "verb_code", "noun_code"]


class AuxSource(AuxTexts):
    """Extra texts for the same kind of windows, embedded already: a ``text_features`` output over
    a rephrase or narrate output, which carries each text's window."""

    text_features: Url = Field(description="text_features output over the extra texts (video_uid, t_start, t_end kept)")
    kind: Literal["pseudo", "human"] = Field(
        "pseudo", description="pseudo: narrator texts (own temperature); human: rephrased narrations")
    other_jobs_key = ("texts", "texts is train_video_text's key (it embeds the texts itself); train_dual_encoder "
                               "takes text_features: a text_features output over those texts")


class Config(TrainingJobConfig):
    """Config of the ``train_dual_encoder`` job (``input``: an ingest output)."""

    job: Literal["train_dual_encoder"] = "train_dual_encoder"
    video_features: Url
    text_features: Url = Field(description="text_features output over the narrations of `input`")
    labels: Url | None = Field(None, description="video_uid,t_start,t_end,verb,noun for narrations without them")
    offset_sec: float = Field(1.0, ge=0, description="window = [t_start - offset, t_end + offset]")
    model: DualEncoderConfig = DualEncoderConfig()
    egonce: bool = Field(False, description="pairs sharing verb and noun count as positives")
    aux: list[AuxSource] = []
    gather_negatives: bool = Field(True, description="contrast against every worker's batch")
    freeze_temperature: bool = Field(False, description="keep the temperature at model.init_temperature")
    freeze_pseudo_temperature: bool = Field(False, description="keep the pseudo pairs' temperature fixed")
    train: TrainerOptions = TrainerOptions()

    @field_validator("train")
    @classmethod
    def _contrastive_batch(cls, train: TrainerOptions) -> TrainerOptions:
        return contrastive(train)


def evaluate(model: DualEncoder, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Held-out text→video and video→text retrieval: per instance, per caption, per verb+noun.

    Several held-out narrations can share a caption (or an action label), so besides exact
    instance recall we count a hit when the top item has the same caption / verb+noun, and
    report the chance level of each, computed from the data. Similarities are computed
    ``block`` rows at a time.
    """
    import torch

    n = len(data["eval_video"])
    if n == 0:
        return {}
    model.eval()
    param = next(model.parameters())
    with torch.no_grad():
        v = model.encode_video(torch.from_numpy(data["eval_video"]).to(param)).float().cpu().numpy()
        t = model.encode_text(torch.from_numpy(data["eval_text"]).to(param)).float().cpu().numpy()
    return paired_retrieval_metrics(v, t, data["eval_verb"], data["eval_noun"], data["eval_caption"])


def _stack(column: Any) -> np.ndarray:
    return np.stack([np.asarray(x, np.float32) for x in column]) if len(column) else np.zeros((0, 0), np.float32)


def eval_arrays(batches: Any) -> dict[str, np.ndarray]:
    """The whole held-out set, as arrays, from its batches (numpy format)."""
    video, text, verb, noun, captions = [], [], [], [], []
    for b in batches:
        video.append(_stack(b["video"]))
        text.append(_stack(b["embedding"]))
        verb.append(b["verb_code"].astype(np.int64))
        noun.append(b["noun_code"].astype(np.int64))
        captions += [str(x) for x in b["text"]]
    if not video:
        return {"eval_video": np.zeros((0, 0), np.float32)}
    return {"eval_video": np.concatenate(video), "eval_text": np.concatenate(text),
            "eval_verb": np.concatenate(verb), "eval_noun": np.concatenate(noun),
            "eval_caption": caption_codes(captions)}


class DualEncoderLoop(LoopConfig):
    """What each worker of train_dual_encoder is given."""

    model: DualEncoderConfig  # with the features' widths
    egonce: bool
    gather: bool  # contrast against every worker's batch
    n_aux: int
    pseudo: bool  # the auxiliary pairs are pseudo-narrations (their own temperature)


class DualEncoderRecipe(Recipe):
    """The dual encoder's part of the shared trainer: pairs in, symmetric InfoNCE out."""

    name = "train_dual_encoder"
    best_metric = "t2v_R@1"
    best_mode = "max"
    loop: DualEncoderLoop

    def build(self) -> Any:
        return DualEncoder(self.loop.model)

    def setup(self, model: Any, options: TrainerOptions) -> None:
        from egoray.train.data import held_out_batches, ordered_shard

        model.gradient_checkpointing = options.gradient_checkpointing
        self.options = options
        self.data = eval_arrays(held_out_batches("eval", 4096))
        self.train_rows = ordered_shard("train", options.seed)
        self.n_aux = self.loop.n_aux
        self.aux_rows = ordered_shard("aux", options.seed) if self.n_aux else None

    def batches(self, epoch: int, batch: int, rank: int) -> Any:
        from egoray.train.data import batches_with_aux

        return batches_with_aux(self.train_rows, self.aux_rows, self.n_aux, batch, epoch, self.options.num_workers)

    def loss(self, engine: Any, item: Any) -> tuple[Any, int]:
        import torch

        from egoray.models.dual_encoder import contrastive_loss, pair_scales, same_label
        from egoray.train.distributed import gather_with_grad

        b, a = item
        size = len(b["video"])
        parts = [b] + ([a] if a is not None else [])
        vin = torch.from_numpy(np.concatenate([_stack(p["video"]) for p in parts]))
        tin = torch.from_numpy(np.concatenate([_stack(p["embedding"]) for p in parts]))
        verb = torch.from_numpy(np.concatenate([p["verb_code"].astype(np.int64) for p in parts]))
        noun = torch.from_numpy(np.concatenate([p["noun_code"].astype(np.int64) for p in parts]))
        human = torch.ones(len(vin), dtype=torch.bool)
        if a is not None:  # aux pairs are pseudo unless their source says they are people's texts
            human[size:] = torch.from_numpy(np.asarray(a["human"], dtype=bool))
        # one forward and one InfoNCE over the mixed batch, each pair's temperature by kind (LaViLa)
        ve, te, scale, pseudo_scale = engine(engine.to_input(vin), engine.to_input(tin))
        gather = self.loop.gather
        if gather:
            ve, te = gather_with_grad(ve), gather_with_grad(te)
            verb, noun = gather_with_grad(verb), gather_with_grad(noun)
            human = gather_with_grad(human.long()).bool()
        # with pseudo pairs in the run every step's loss depends on τ′ (zero gradient when a batch
        # has none): DDP wants each trained parameter in every step's graph
        scales = pair_scales(human, scale, pseudo_scale) if self.loop.pseudo else scale
        positives = same_label(verb, noun) if self.loop.egonce else None
        return contrastive_loss(ve, te, scales, positives), size

    def after_step(self, engine: Any) -> None:
        engine.module.clamp_scales()  # in place: exact under DDP; the forward pass clamps under DeepSpeed too

    def evaluate(self, engine: Any) -> dict[str, float]:
        return evaluate(engine.module, self.data)

    def scalars(self, engine: Any) -> dict[str, float]:
        scale, pseudo_scale = engine.module.scales()
        return {"temperature": float(1 / scale.detach().float()),
                "pseudo_temperature": float(1 / pseudo_scale.detach().float())}

    def export(self) -> dict[str, Any]:
        return {"kind": "dual_encoder", "config": self.loop.model.model_dump()}


def _train_loop(loop: DualEncoderLoop) -> None:
    from egoray.train.recipe import train

    train(DualEncoderRecipe(loop), loop)


def plan(config: Config) -> TrainingPlan:
    """The train_dual_encoder job's plan (its inputs checked here, before anything runs)."""
    from egoray.train.data import text_features_source
    from egoray.train.pairs import build_pairs, check_video_features, pairs_dataset

    splits = config.train_splits + config.eval_splits
    items, inputs = text_features_source(config.text_features, splits)
    aux_items = [text_features_source(a.text_features) for a in config.aux]
    # changed narrations, features or labels make another run: refused like a changed config
    watched = inputs + [u for _, us in aux_items for u in us] + [check_video_features(config.video_features)]
    claimed = watched + ([config.labels] if config.labels else [])

    def pairs() -> dict[str, Any]:
        url = build_pairs(config.output, "pairs", items, config.video_features, config.offset_sec, config.labels)
        aux = [build_pairs(config.output, f"aux{i}", build, config.video_features,
                           a.window_offset(a.kind, config.offset_sec))
               for i, (a, (build, _)) in enumerate(zip(config.aux, aux_items, strict=True))]
        datasets = {"train": pairs_dataset(url, config.train_splits, PAIR_COLUMNS),
                    "eval": pairs_dataset(url, config.eval_splits, PAIR_COLUMNS)}
        if aux:
            parts = [pairs_dataset(u, [], PAIR_COLUMNS, {"human": a.kind == "human"}) for u, a in zip(aux, config.aux)]
            datasets["aux"] = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        return {"url": url, "aux": aux, "datasets": datasets}

    def loop(counts: dict[str, Any]) -> DualEncoderLoop:  # the runner has refused too few training pairs
        dims = counts["dims"]
        model = config.model.model_copy(update={"video_dim": dims["video"], "text_dim": dims["embedding"]})
        return DualEncoderLoop(train=options, output=config.output, n_train=counts["train"], model=model,
                               egonce=config.egonce, gather=config.gather_negatives and config.train.num_workers > 1,
                               n_aux=counts["aux"], pseudo=pseudo)

    options, pseudo = with_temperature_freezes(config.train, any(a.kind == "pseudo" for a in config.aux),
                                               config.freeze_temperature, config.freeze_pseudo_temperature)
    return TrainingPlan(claimed, options, _train_loop, pairs, loop)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the train_dual_encoder job; returns its run.json."""
    return run_training(config, overwrite, plan(config))
