"""``train_dual_encoder`` job: CLIP-style projection heads over precomputed video and text features.

Inputs: an ingest output (narrations with splits), a ``video_features`` output (per-time-step
features of whole videos) and a ``text_features`` output over the same narrations (it carries
each narration's video, times and split). Each training pair is a narration's text embedding and
the mean video feature of a window around it, built by a Ray Data pass grouped by video (each
video's features read once) into ``_work/pairs`` and streamed to the Ray Train workers; the loss
is symmetric InfoNCE with a learnable temperature (clamped to ≤ 100), optionally EgoNCE (extra
positives sharing verb and noun) and auxiliary pairs (rephrased / narrator texts of the same
windows) with their own temperature. Training runs on Ray Train (DeepSpeed ZeRO or DDP) and
resumes from its latest checkpoint. Output::

    OUTPUT/model/model.pt              weights + head config (``load_dual_encoder``)
    OUTPUT/metrics/part-0000.parquet   per-epoch loss and held-out retrieval metrics
    OUTPUT/rejects/*.parquet           narrations without video features
    OUTPUT/train/                      Ray Train checkpoints
    OUTPUT/run.json
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from egoray.config import JobConfig, StrictModel, Url
from egoray.data.raw import InputError
from egoray.eval.retrieval import blockwise_ranks, chance_recall_at_1, recall_at
from egoray.models.dual_encoder import DualEncoder, DualEncoderConfig, load_dual_encoder
from egoray.stages.pairs import caption_codes
from egoray.train.distributed import TrainerOptions
from egoray.train.job import launch, prepare

__all__ = ["AuxSource", "Config", "evaluate", "load_dual_encoder", "run"]

PAIR_COLUMNS = ["id", "text", "video", "embedding", "verb_code", "noun_code"]


class AuxSource(StrictModel):
    """Extra texts for the same kind of windows (LaViLa's rephrased / pseudo narrations): a
    ``text_features`` output over a rephrase or narrate output, which carries each text's window."""

    text_features: Url = Field(description="text_features output over the extra texts (video_uid, t_start, t_end kept)")


class Config(JobConfig):
    """Config of the ``train_dual_encoder`` job (``input``: an ingest output)."""

    job: Literal["train_dual_encoder"] = "train_dual_encoder"
    video_features: Url
    text_features: Url = Field(description="text_features output over the narrations of `input`")
    labels: Url | None = Field(None, description="video_uid,t_start,t_end,verb,noun for narrations without them")
    offset_sec: float = Field(1.0, ge=0, description="window = [t_start - offset, t_end + offset]")
    train_splits: list[str] = ["train"]
    eval_splits: list[str] = ["val", "test"]
    model: DualEncoderConfig = DualEncoderConfig()
    egonce: bool = Field(False, description="pairs sharing verb and noun count as positives")
    aux: list[AuxSource] = []
    aux_weight: float = Field(1.0, ge=0)
    gather_negatives: bool = Field(True, description="contrast against every worker's batch")
    resumable_changes = {"train": {"epochs", "max_failures", "keep_checkpoints"}}
    train: TrainerOptions = TrainerOptions()


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
    out: dict[str, float] = {"eval_items": float(n)}
    verb, noun = data["eval_verb"], data["eval_noun"]
    variants: list[tuple[str, np.ndarray | None]] = [("", None), ("_caption", data["eval_caption"])]
    if ((verb >= 0) & (noun >= 0)).all():
        variants.append(("_label", np.unique(np.stack([verb, noun], 1), axis=0, return_inverse=True)[1].ravel()))
    for name, codes in variants:
        for direction, q, c in (("t2v", t, v), ("v2t", v, t)):
            for k, value in recall_at(blockwise_ranks(q, c, codes, codes)).items():
                out[f"{direction}_{k}{name}"] = value
        out[f"chance_R@1{name}"] = _chance(codes, n)
    return out


def _chance(codes: np.ndarray | None, n: int) -> float:
    """Expected R@1 of a random ranking: the mean share of candidates relevant to a query."""
    if codes is None:
        return chance_recall_at_1(np.arange(n))
    _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    return float((counts[inverse] / n).mean())


def _stack(column: Any) -> np.ndarray:
    return np.stack([np.asarray(x, np.float32) for x in column]) if len(column) else np.zeros((0, 0), np.float32)


def eval_arrays(shard: Any) -> dict[str, np.ndarray]:
    """The whole held-out set, as arrays (every worker reads all of it)."""
    video, text, verb, noun, captions = [], [], [], [], []
    for b in shard.iter_batches(batch_size=4096, batch_format="numpy"):
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


def _train_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: shard the pairs, train, evaluate, checkpoint every few epochs."""
    import ray.train
    import torch

    from egoray.models.dual_encoder import contrastive_loss, same_label
    from egoray.train.distributed import Engine, effective_batch, gather_with_grad, report, resume

    options = TrainerOptions(**loop["train"])
    torch.manual_seed(options.seed)
    torch.set_num_threads(max(1, int(options.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = DualEncoder(DualEncoderConfig(**loop["model"]))
    model.gradient_checkpointing = options.gradient_checkpointing
    data = eval_arrays(ray.train.get_dataset_shard("eval"))
    train_shard = ray.train.get_dataset_shard("train")
    n_aux = loop["n_aux"]
    aux_shard = ray.train.get_dataset_shard("aux") if n_aux else None
    batch = effective_batch(loop["n_train"], world, options.batch_size)
    engine = Engine(model, options, batch)
    state = resume(engine)
    start = int(state.get("epoch", 0))
    history = list(state.get("history", []))
    if start == 0:
        # every rank evaluates: under ZeRO-3 a forward pass gathers weights collectively
        initial = evaluate(engine.module, data)
        history.append({"epoch": 0, "loss": None, **(initial if rank == 0 else {})})
    export = {"kind": "dual_encoder", "config": loop["model"]}
    aux_batch = max(1, min(batch, n_aux // world)) if n_aux else 0
    for epoch in range(start + 1, options.epochs + 1):
        engine.train()
        t0 = time.perf_counter()
        losses, seen = [], 0
        use_aux = n_aux >= 2 * world and aux_batch >= 2 and loop["aux_weight"] > 0
        aux_batches = _cycle(aux_shard, aux_batch, options.seed + epoch) if use_aux else None
        for b in train_shard.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True,
                                          local_shuffle_buffer_size=max(batch, 8 * batch),
                                          local_shuffle_seed=options.seed * 100_003 + epoch * 31 + rank):
            vin, tin = torch.from_numpy(_stack(b["video"])), torch.from_numpy(_stack(b["embedding"]))
            verb, noun = torch.from_numpy(b["verb_code"].astype(np.int64)), torch.from_numpy(b["noun_code"].astype(np.int64))
            size = len(vin)
            if use_aux:  # one forward for both kinds of pairs (DDP allows one forward per backward)
                a = next(aux_batches)
                vin = torch.cat([vin, torch.from_numpy(_stack(a["video"]))])
                tin = torch.cat([tin, torch.from_numpy(_stack(a["embedding"]))])
            ve, te, scale, aux_scale = engine(engine.to_input(vin), engine.to_input(tin))
            ave, ate = ve[size:], te[size:]
            ve, te = ve[:size], te[:size]
            positives = None
            if loop["egonce"]:
                positives = same_label(gather_with_grad(verb) if loop["gather"] else verb,
                                       gather_with_grad(noun) if loop["gather"] else noun)
            if loop["gather"]:
                ve, te = gather_with_grad(ve), gather_with_grad(te)
            loss = contrastive_loss(ve, te, scale, positives)
            if use_aux:
                if loop["gather"]:
                    ave, ate = gather_with_grad(ave), gather_with_grad(ate)
                loss = loss + loop["aux_weight"] * contrastive_loss(ave, ate, aux_scale)
            engine.step(loss)
            losses.append(float(loss.detach()))
            seen += size
        seconds = time.perf_counter() - t0
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None,
                   "examples": seen * world, "examples_per_s": seen * world / max(seconds, 1e-9)}
        with engine.gathered():
            metrics["temperature"] = float(1 / engine.module.scales()[0].detach().float())
        evaluated = evaluate(engine.module, data)  # on every rank (see above)
        metrics.update(evaluated if rank == 0 else {})
        history.append(metrics)
        if rank == 0:
            shown = {k: round(v, 4) for k, v in metrics.items() if k in ("loss", "t2v_R@1", "examples_per_s") and v}
            print(f"[train_dual_encoder] epoch {epoch}/{options.epochs} {shown}", flush=True)
        if epoch == options.epochs or epoch % options.checkpoint_every == 0:
            # reporting is a synchronising round trip to the controller: only with a checkpoint
            report(engine, {k: v for k, v in metrics.items() if v is not None},
                   {"epoch": epoch, "history": history, "resumed_from": start}, export)
    if start >= options.epochs:  # nothing left to train: re-save, recording that this run resumed
        report(engine, {"epoch": start}, {**state, "resumed_from": start}, export)


def _cycle(shard: Any, batch: int, seed: int) -> Any:
    """Batches of the aux shard, again and again (aux sets are smaller than the main one)."""
    epoch = 0
    while True:
        yielded = False
        for b in shard.iter_batches(batch_size=batch, batch_format="numpy", drop_last=True,
                                    local_shuffle_buffer_size=8 * batch, local_shuffle_seed=seed + epoch):
            yielded = True
            yield b
        if not yielded:
            return
        epoch += 1


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    from egoray.train.data import build_pairs, pairs_dataset, text_features_source

    wall0 = time.perf_counter()
    splits = config.train_splits + config.eval_splits
    items, inputs = text_features_source(config.text_features, splits)
    aux_items = [text_features_source(a.text_features) for a in config.aux]
    ledger = prepare(config, overwrite, inputs + [u for _, us in aux_items for u in us])

    def pairs() -> dict[str, Any]:
        url = build_pairs(config.output, "pairs", items, config.video_features, config.offset_sec, config.labels)
        aux = [build_pairs(config.output, f"aux{i}", build, config.video_features, config.offset_sec)
               for i, (build, _) in enumerate(aux_items)]
        datasets = {"train": pairs_dataset(url, config.train_splits, PAIR_COLUMNS),
                    "eval": pairs_dataset(url, config.eval_splits, PAIR_COLUMNS)}
        if aux:
            datasets["aux"] = pairs_dataset(aux, [], PAIR_COLUMNS)
        return {"url": url, "aux": aux, "datasets": datasets, "split": ["train", "aux"]}

    def loop(counts: dict[str, Any]) -> dict[str, Any]:
        if counts["train"] < 2:
            raise InputError(f"only {counts['train']} training pairs (splits {config.train_splits}); need at least 2")
        dims = counts["dims"]
        model = config.model.model_copy(update={"video_dim": dims["video"], "text_dim": dims["embedding"]})
        return {"model": model.model_dump(), "egonce": config.egonce, "aux_weight": config.aux_weight,
                "gather": config.gather_negatives and config.train.num_workers > 1,
                "n_train": counts["train"], "n_aux": counts["aux"]}

    return launch(config, config.train, ledger, _train_loop, pairs, loop, wall0)
