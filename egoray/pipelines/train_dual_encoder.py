"""``train_dual_encoder`` job: CLIP-style projection heads over precomputed video and text features.

Inputs: an ingest output (narrations with splits), a ``video_features`` output (per-time-step
features of whole videos) and a ``text_features`` output over the same narrations. Each training
pair is a narration's text embedding and the mean video feature of a window around it; the loss
is symmetric InfoNCE with a learnable temperature (clamped to ≤ 100), optionally EgoNCE (extra
positives sharing verb and noun) and auxiliary pairs (rephrased / narrator texts of the same
windows) with their own temperature. Training runs on Ray Train (DeepSpeed ZeRO or DDP) and
resumes from its latest checkpoint. Output::

    OUTPUT/model/model.pt              weights + head config (``load_dual_encoder``)
    OUTPUT/metrics/part-0000.parquet   per-epoch loss and held-out retrieval metrics
    OUTPUT/rejects/part-0000.parquet   narrations without features or text embedding
    OUTPUT/train/                      Ray Train checkpoints
    OUTPUT/run.json
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import JobConfig, StrictModel, Url
from egoray.data.narrations import load_narrations
from egoray.data.raw import InputError
from egoray.eval.retrieval import chance_recall_at_1, ranks_of_first_relevant, recall_at
from egoray.train.bank import load_bank
from egoray.train.distributed import TrainerOptions, load_exported
from egoray.train.dual_encoder import DualEncoder, DualEncoderConfig
from egoray.train.job import launch, prepare
from egoray.train.pairs import read_labels, resolve_windows, text_matrix


class AuxSource(StrictModel):
    """Extra texts for the same kind of windows (LaViLa's rephrased / pseudo narrations)."""

    text_features: Url = Field(description="text_features output over the extra texts")
    windows: Url = Field(description="table with id_col, video_uid, t_start, t_end (rephrase / narrate output)")
    id_col: str = "narration_id"


class Config(JobConfig):
    """Config of the ``train_dual_encoder`` job (``input``: an ingest output)."""

    job: Literal["train_dual_encoder"] = "train_dual_encoder"
    video_features: Url
    text_features: Url
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


def build_data(config: Config) -> tuple[dict[str, np.ndarray], list[dict], dict[str, int]]:
    """Arrays the workers train on (train/eval pairs, aux pairs), rejects, and counts."""
    bank = load_bank(config.video_features)
    narrations = load_narrations(config.input, config.train_splits + config.eval_splits)
    if narrations.num_rows == 0:
        raise InputError(f"{config.input}: no narrations in splits {config.train_splits + config.eval_splits}")
    w = resolve_windows(narrations, bank, config.offset_sec, read_labels(config.labels))
    text, found = text_matrix(config.text_features, w.ids)
    rejects = list(w.rejects) + [
        {"record_id": w.ids[i], "stage": "pairs", "reason": "no_text_embedding", "detail": "", "input": ""}
        for i in np.flatnonzero(~found)]
    keep = np.flatnonzero(found)
    video = bank.pool(w.rows[keep], w.t1[keep], w.t2[keep])
    split = w.split[keep]
    is_train = np.isin(split, config.train_splits)
    texts = np.asarray(w.texts, dtype=object)[keep]
    data = {
        "video": video[is_train], "text": text[keep][is_train],
        "verb": w.verb[keep][is_train], "noun": w.noun[keep][is_train],
        "eval_video": video[~is_train], "eval_text": text[keep][~is_train],
        "eval_verb": w.verb[keep][~is_train], "eval_noun": w.noun[keep][~is_train],
        "eval_caption": _caption_codes(texts[~is_train]),
    }
    aux_video, aux_text = [], []
    for source in config.aux:
        v, t = _aux_pairs(source, bank, config.offset_sec)
        aux_video.append(v)
        aux_text.append(t)
    dim = text.shape[1]
    data["aux_video"] = np.concatenate(aux_video) if aux_video else np.zeros((0, bank.dim), np.float32)
    data["aux_text"] = np.concatenate(aux_text) if aux_text else np.zeros((0, dim), np.float32)
    counts = {"in": narrations.num_rows, "out": int(len(keep)), "rejected": len(rejects),
              "train": int(is_train.sum()), "eval": int((~is_train).sum()), "aux": int(len(data["aux_video"]))}
    if counts["train"] < 2:
        raise InputError(f"only {counts['train']} training pairs (splits {config.train_splits}); need at least 2")
    return data, rejects, counts


def _caption_codes(texts: np.ndarray) -> np.ndarray:
    norm = [" ".join(str(t).lower().split()) for t in texts]
    vocab = {t: i for i, t in enumerate(sorted(set(norm)))}
    return np.array([vocab[t] for t in norm], dtype=np.int64)


def _aux_pairs(source: AuxSource, bank: Any, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(video windows, text embeddings) of every aux text whose id (or id before ``#``) has a window."""
    from egoray.train.bank import load_text_embeddings

    try:
        windows = storage.read_parquet(source.windows, columns=[source.id_col, "video_uid", "t_start", "t_end"])
    except (storage.StorageError, KeyError, pa.ArrowInvalid) as e:
        raise InputError(f"aux windows {source.windows}: {e}") from None
    where = {k: i for i, k in enumerate(windows[source.id_col].cast(pa.string()).to_pylist())}
    ids, mat = load_text_embeddings(source.text_features)
    pos = np.fromiter((where.get(i, where.get(i.rsplit("#", 1)[0], -1)) for i in ids), np.int64, len(ids))
    ok = np.flatnonzero(pos >= 0)
    videos = np.asarray(windows["video_uid"].to_pylist(), dtype=object)[pos[ok]]
    rows = bank.index_of(list(videos))
    has = rows >= 0
    t_start = windows["t_start"].to_numpy(zero_copy_only=False)[pos[ok]][has]
    t_end = windows["t_end"].to_numpy(zero_copy_only=False)[pos[ok]][has]
    return bank.pool(rows[has], t_start - offset, t_end + offset), mat[ok][has]


def evaluate(model: DualEncoder, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Held-out text→video and video→text retrieval: per instance, per caption, per verb+noun.

    Several held-out narrations can share a caption (or an action label), so besides exact
    instance recall we count a hit when the top item has the same caption / verb+noun, and
    report the chance level of each, computed from the data.
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
    sim = t @ v.T
    out: dict[str, float] = {"eval_items": float(n)}
    for name, rel in (("", None), ("_caption", data["eval_caption"]), ("_label", None)):
        if name == "_label":
            known = (data["eval_verb"] >= 0) & (data["eval_noun"] >= 0)
            if not known.all():
                continue
            rel = (data["eval_verb"][:, None] == data["eval_verb"][None, :]) & \
                  (data["eval_noun"][:, None] == data["eval_noun"][None, :])
        elif name == "_caption":
            rel = rel[:, None] == rel[None, :]
        else:
            rel = np.arange(n)
        for direction, s, r in (("t2v", sim, rel), ("v2t", sim.T, rel if rel.ndim == 1 else rel.T)):
            for k, value in recall_at(ranks_of_first_relevant(s, r)).items():
                out[f"{direction}_{k}{name}"] = value
        out[f"chance_R@1{name}"] = chance_recall_at_1(rel)
    return out


def _train_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: shard the pairs, train, evaluate, checkpoint every few epochs."""
    import ray
    import ray.train
    import torch

    from egoray.train.distributed import Engine, effective_batch, epoch_batches, gather_with_grad, report, resume
    from egoray.train.dual_encoder import contrastive_loss, same_label

    options = TrainerOptions(**loop["train"])
    torch.manual_seed(options.seed)
    torch.set_num_threads(max(1, int(options.cpus_per_worker)))
    data = ray.get(loop["data"])  # read-only views of the object store: never written
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model = DualEncoder(DualEncoderConfig(**loop["model"]))
    model.gradient_checkpointing = options.gradient_checkpointing
    n = len(data["video"])
    batch = effective_batch(n, world, options.batch_size)
    engine = Engine(model, options, batch)
    state = resume(engine)
    start = int(state.get("epoch", 0))
    history = list(state.get("history", []))
    if start == 0:
        # every rank evaluates: under ZeRO-3 a forward pass gathers weights collectively
        initial = evaluate(engine.module, data)
        history.append({"epoch": 0, "loss": None, **(initial if rank == 0 else {})})
    video, text = torch.from_numpy(data["video"]), torch.from_numpy(data["text"])
    verb, noun = torch.from_numpy(data["verb"]), torch.from_numpy(data["noun"])
    aux_v, aux_t = torch.from_numpy(data["aux_video"]), torch.from_numpy(data["aux_text"])
    n_aux = len(aux_v)
    export = {"kind": "dual_encoder", "config": loop["model"]}
    for epoch in range(start + 1, options.epochs + 1):
        engine.train()
        t0 = time.perf_counter()
        losses, seen = [], 0
        rng = np.random.default_rng(options.seed * 7919 + epoch * 31 + rank)
        for idx in epoch_batches(n, batch, rank, world, options.seed, epoch):
            i = torch.from_numpy(idx)
            vin, tin = video[i], text[i]
            use_aux = n_aux >= 2 and loop["aux_weight"] > 0
            if use_aux:  # one forward for both kinds of pairs (DDP allows one forward per backward)
                j = torch.from_numpy(rng.choice(n_aux, size=min(batch, n_aux), replace=False))
                vin, tin = torch.cat([vin, aux_v[j]]), torch.cat([tin, aux_t[j]])
            ve, te, scale, aux_scale = engine(engine.to_input(vin), engine.to_input(tin))
            ave, ate = ve[len(idx):], te[len(idx):]
            ve, te = ve[:len(idx)], te[:len(idx)]
            positives = None
            if loop["egonce"]:
                positives = same_label(gather_with_grad(verb[i]) if loop["gather"] else verb[i],
                                       gather_with_grad(noun[i]) if loop["gather"] else noun[i])
            if loop["gather"]:
                ve, te = gather_with_grad(ve), gather_with_grad(te)
            loss = contrastive_loss(ve, te, scale, positives)
            if use_aux:
                if loop["gather"]:
                    ave, ate = gather_with_grad(ave), gather_with_grad(ate)
                loss = loss + loop["aux_weight"] * contrastive_loss(ave, ate, aux_scale)
            engine.step(loss)
            losses.append(float(loss.detach()))
            seen += len(idx)
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


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    wall0 = time.perf_counter()
    ledger = prepare(config, overwrite)
    data, rejects, counts = build_data(config)
    print(f"[train_dual_encoder] {counts['train']} training pairs, {counts['eval']} held-out, "
          f"{counts['aux']} auxiliary, {counts['rejected']} rejected", flush=True)
    model = config.model.model_copy(update={"video_dim": data["video"].shape[1], "text_dim": data["text"].shape[1]})
    loop = {"model": model.model_dump(), "egonce": config.egonce, "aux_weight": config.aux_weight,
            "gather": config.gather_negatives and config.train.num_workers > 1}
    return launch(config, config.train, ledger, _train_loop, loop, data, rejects, counts, wall0)


def load_dual_encoder(url: str) -> DualEncoder:
    """A trained dual encoder from a ``train_dual_encoder`` output (or its model.pt)."""
    blob = load_exported(url)
    if blob.get("kind") != "dual_encoder":
        raise InputError(f"{url}: holds a {blob.get('kind')!r} model, not a dual encoder")
    model = DualEncoder(DualEncoderConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
