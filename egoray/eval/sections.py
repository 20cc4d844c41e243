"""The parts of the ``eval`` job, each from the outputs of earlier jobs to a dict of metrics.

Ray-free: every section reads its inputs with :mod:`egoray.storage`, computes with numpy (and
the trained heads with torch) and returns a :class:`SectionResult`. The pipeline records each
one as it finishes, so a re-run skips finished sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.eval.zeroshot import DEFAULT_TEMPLATES
from egoray.features.text import TextEncoderConfig
from egoray.features.vectors import unit_rows


class EK100Relevancy(StrictModel):
    """EK-100 annotation CSVs to build the MIR relevancy from (ids must be the ingested narration ids)."""

    videos_csv: Url
    sentences_csv: Url | None = None
    relevancy: Url | None = Field(None, description="the official relevancy matrix (caption_relevancy_EPIC_100_"
                                                    "retrieval_test.pkl, .npy, .npz) instead of one from the classes")


def retrieval_offset(cfg: RetrievalSection) -> float:
    """How far each narration's window is widened: EK-100's segments are exact, Ego4D's points
    are not."""
    if cfg.offset_sec is not None:
        return cfg.offset_sec
    return 0.0 if cfg.ek100 is not None else 1.0


class RetrievalSection(StrictModel):
    """Held-out text↔video retrieval with a trained dual encoder, or in the joint space the
    features already share (a ``train_video_text`` run's towers serving both feature jobs)."""

    model: Url | None = Field(None, description="a train_dual_encoder output; none: the video and text features "
                                                "are compared as they are (one joint space)")
    narrations: Url = Field(description="an ingest output (the held-out narrations and their splits)")
    video_features: Url
    text_features: Url = Field(description="text_features output over the same narrations")
    labels: Url | None = Field(None, description="video_uid,t_start,t_end,verb,noun for narrations without them")
    splits: list[str] = ["val", "test"]
    offset_sec: float | None = Field(None, ge=0, description="widen each narration's window; default 1 s, none "
                                                             "with ek100 (its segments' exact bounds)")
    ek100: EK100Relevancy | None = Field(None, description="MIR relevancy from EK-100 CSVs instead of labels")


class QueryEncoder(StrictModel):
    """Where a section's texts (queries, class prompts) are embedded: by the encoder a
    text_features output was made with (the one a dual encoder trained on), or by ``encoder``."""

    text_features: Url | None = Field(None, description="embed with the encoder this text_features output was made with")
    encoder: TextEncoderConfig | None = None

    def check_one_encoder(self, what: str) -> None:
        if bool(self.text_features) == bool(self.encoder):
            raise ValueError(f"{what} needs exactly one of text_features (its encoder) or encoder")


class ZeroShotSection(QueryEncoder):
    """Zero-shot classification of labelled clips by class-prompt embeddings.

    Prompts are embedded here (a class list is small): by the encoder ``text_features`` was made
    with (the one a dual encoder trained on), or by ``encoder``; or read from ``class_prompts``,
    a text_features output of the class list under templates.
    """

    classes: Url | None = Field(None, description="class list: .txt lines, Charades 'cNNN Label', Kinetics JSON")
    templates: list[str] = list(DEFAULT_TEMPLATES)
    class_prompts: Url | None = Field(None, description="precomputed prompt embeddings instead of classes")
    clips: Url = Field(description="table video_uid, t_start, t_end, label (a class name or a list of them), or "
                                   "a benchmark's own file (clips_format)")
    clips_format: Literal["table", "kinetics_csv", "charades_ego_csv"] = Field(
        "table", description="kinetics_csv: Kinetics-400 val.csv (clips = the downloader's files); charades_ego_csv: "
                             "CharadesEgo_v1_test.csv (whole videos, every class they hold)")
    charades_subset: Literal["ego", "third_person", "all"] = "ego"
    video_features: Url
    model: Url | None = Field(None, description="a train_dual_encoder output; none: raw features vs prompts")
    video_splits: Url | None = Field(None, description="a splits.json: only clips of videos in `splits`")
    splits: list[str] = ["val", "test"]

    @model_validator(mode="after")
    def _one_prompt_source(self) -> ZeroShotSection:
        if bool(self.class_prompts) == bool(self.classes):
            raise ValueError("zeroshot needs exactly one of classes (embedded here) or class_prompts")
        if self.classes:
            self.check_one_encoder("zeroshot.classes")
        if self.clips_format == "charades_ego_csv" and not self.classes:
            raise ValueError("clips_format charades_ego_csv needs classes (Charades' cNNN class list)")
        return self


class CaptioningSection(StrictModel):
    """Generated text against human references (COCO caption metrics)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="names the section (and its files)")
    kind: Literal["narrations", "summaries"] = Field(
        description="narrations: a narrate output (its first caption per window) vs the narrations inside each window; "
                    "summaries: a captions output vs each video's summaries")
    predictions: Url
    references: Url = Field(description="an ingest output")
    tokenizer: Literal["ptb", "none"] = "ptb"
    protocol: Literal["coco", "lavila"] = Field(
        "coco", description="coco: every narration inside the window is a reference, PTB tokens; lavila (narrations): "
                            "the window's own narration (window id = narration id) alone, LaViLa's tokenisation")

    @model_validator(mode="after")
    def _lavila_protocol_is_for_narrations(self) -> CaptioningSection:
        if self.protocol == "lavila" and self.kind != "narrations":
            raise ValueError("protocol lavila scores a narrator's captions (kind: narrations)")
        return self


class MCQSection(StrictModel):
    """Multiple-choice accuracy on ClosedQA sets, the answers ranked by a dual encoder."""

    qa: Url = Field(description="a qa output")
    model: Url = Field(description="a train_dual_encoder output")
    video_features: Url
    text_features: Url = Field(description="the text_features output the model trained on (its encoder is reused)")


class EgoMCQSection(QueryEncoder):
    """EgoMCQ (EgoVLP / LaViLa): pick the clip a narration describes among 5, inter- and intra-video."""

    egomcq: Url = Field(description="egomcq.json")
    video_features: Url = Field(description="features of the choices' videos (keyed by video uid)")
    model: Url | None = Field(None, description="a train_dual_encoder output; none: one joint space")

    @model_validator(mode="after")
    def _one_encoder(self) -> EgoMCQSection:
        self.check_one_encoder("egomcq")
        return self


class EGTEASection(QueryEncoder):
    """EGTEA Gaze+ zero-shot action recognition: top-1 and mean-class accuracy (LaViLa's figures)."""

    classes: Url = Field(description="action_idx.txt")
    split: Url = Field(description="a split file, e.g. test_split1.txt")
    video_features: Url = Field(description="features of the EGTEA clip files (one key per clip id)")
    templates: list[str] = ["{label}"]
    model: Url | None = Field(None, description="a train_dual_encoder output; none: one joint space")

    @model_validator(mode="after")
    def _one_encoder(self) -> EGTEASection:
        self.check_one_encoder("egtea")
        return self


class GapSection(StrictModel):
    """Modality gap of paired embeddings, with 2-D plots."""

    sources: list[Literal["dual_encoder", "captions"]] = ["dual_encoder"]
    captions: Url | None = Field(None, description="a captions output (CoCa image mean vs summary embedding)")
    plots: list[Literal["svd", "umap"]] = ["svd", "umap"]


@dataclass
class SectionResult:
    metrics: dict[str, Any]
    counts: dict[str, int]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    plots: dict[str, bytes] = field(default_factory=dict)
    pairs: tuple[np.ndarray, np.ndarray] | None = None


def _reject(record_id: str, stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    return {"record_id": str(record_id), "stage": stage, "reason": reason, "detail": detail, "input": ""}


def _encode(model: Any, video: np.ndarray | None = None, text: np.ndarray | None = None) -> np.ndarray:
    import torch

    param = next(model.parameters())
    with torch.no_grad():
        if video is not None:
            return model.encode_video(torch.from_numpy(video).to(param)).float().numpy()
        return model.encode_text(torch.from_numpy(text).to(param)).float().numpy()


def read_pooled(url: str, columns: list[str]) -> tuple[pa.Table, list[dict[str, Any]], int]:
    """The usable rows of a pooled table (built per video by the eval job), the rejects, all rows."""
    from egoray.stages.base import DETAIL, REASON, STAGE, pending

    files = storage.listdir(url, ".parquet")
    if not files:
        return pa.table({c: [] for c in columns}), [], 0
    table = storage.read_parquet(url)
    ok = pending(table)
    bad = table.filter(pa.array(~ok))
    rejects = [_reject(r["id"], r[STAGE] or "pairs", r[REASON], r[DETAIL] or "")
               for r in bad.select(["id", STAGE, REASON, DETAIL]).to_pylist()]
    return table.filter(pa.array(ok)).select([c for c in columns if c in table.column_names]), rejects, table.num_rows


def _matrix(column: Any) -> np.ndarray:
    from egoray.stages.text import embedding_matrix

    return embedding_matrix(column)


def _dense(codes: np.ndarray) -> np.ndarray:
    """Label codes (stable hashes, -1 unknown) as 0..K-1 (unknown stays -1)."""
    out = np.full(len(codes), -1, dtype=np.int64)
    known = codes >= 0
    out[known] = np.unique(codes[known], return_inverse=True)[1].ravel()
    return out


def retrieval(cfg: RetrievalSection, pairs: str) -> SectionResult:
    """R@k / median rank per instance, and MIR mAP / nDCG with a graded relevancy.

    ``pairs``: the held-out narrations with their text embedding and pooled video feature, built
    per video by the eval job (:func:`egoray.train.data.build_pairs`).
    """
    from egoray.eval.relevancy import ek100_relevancy, label_relevancy
    from egoray.eval.retrieval import blockwise_ranks, chance_recall_at_1, mir_metrics, recall_at
    from egoray.models.dual_encoder import load_dual_encoder

    table, rejects, total = read_pooled(pairs, ["id", "text", "video", "embedding", "verb_code", "noun_code"])
    if table.num_rows < 2:
        raise InputError(f"only {table.num_rows} held-out narrations have features and embeddings; need 2")
    video, text_emb = _matrix(table["video"]), _matrix(table["embedding"])
    if cfg.model:
        model = load_dual_encoder(cfg.model)
        video, text_emb = _encode(model, video=video), _encode(model, text=text_emb)
    elif video.shape[1] != text_emb.shape[1]:
        raise InputError(f"video features are {video.shape[1]}-d and text features {text_emb.shape[1]}-d: without a "
                         "model both must come from one joint space (a train_video_text run's towers)")
    n = table.num_rows
    metrics: dict[str, Any] = {"items": int(n), "space": "dual_encoder" if cfg.model else "raw"}
    metrics.update({f"t2v_{k}": v for k, v in recall_at(blockwise_ranks(text_emb, video)).items()})
    metrics.update({f"v2t_{k}": v for k, v in recall_at(blockwise_ranks(video, text_emb)).items()})
    metrics["chance_R@1"] = chance_recall_at_1(np.arange(n))
    ids = table["id"].to_pylist()
    texts = table["text"].to_pylist()
    if cfg.ek100 is not None:
        rel = ek100_relevancy(cfg.ek100.videos_csv, cfg.ek100.sentences_csv, cfg.ek100.relevancy)
        rows = {nid: i for i, nid in enumerate(ids)}
        v_idx = [rows.get(v, -1) for v in rel.video_ids]
        s_idx = [rows.get(s, -1) for s in rel.sentence_ids]
        if min(v_idx + s_idx) < 0:
            raise InputError(f"{cfg.ek100.videos_csv}: {sum(i < 0 for i in v_idx + s_idx)} EK-100 ids have no "
                             "held-out narration with features; evaluate the split the CSVs describe")
        mir = mir_metrics(video[v_idx] @ text_emb[s_idx].T, rel.matrix)
        metrics.update({f"ek100_{k}": v for k, v in mir.items()})
    else:
        verb = _dense(table["verb_code"].to_numpy(zero_copy_only=False))
        noun = _dense(table["noun_code"].to_numpy(zero_copy_only=False))
        labelled = (verb >= 0) & (noun >= 0)
        if labelled.sum() >= 2:
            nouns = np.zeros((len(noun), int(noun.max()) + 1), dtype=bool)
            nouns[np.flatnonzero(labelled), noun[labelled]] = True
            sel = np.flatnonzero(labelled)
            rel = label_relevancy(verb[sel], nouns[sel], verb[sel], nouns[sel])
            sim = video[sel] @ text_emb[sel].T
            metrics.update({f"mir_{k}": v for k, v in mir_metrics(sim, rel).items()})
            chance_sim = np.zeros_like(rel)  # every candidate tied: the worst-case ordering
            metrics["mir_avg_mAP_constant_scores"] = mir_metrics(chance_sim, rel)["avg_mAP"]
            metrics["mir_items"] = int(len(sel))
    best = np.argmax(text_emb[:12] @ video.T, axis=1)
    samples = [{"query": texts[i], "top_match": texts[j], "correct": bool(i == j)} for i, j in enumerate(best)]
    counts = {"in": int(total), "out": int(n), "rejected": len(rejects)}
    return SectionResult(metrics, counts, rejects, samples, pairs=(video, text_emb))


def _class_key(cid: str) -> tuple[int, int, str]:
    """Class-id order: numeric ids (``12``) and Charades codes (``c012``) by number."""
    digits = cid[1:] if cid[:1] == "c" else cid
    return (0, int(digits), cid) if digits.isdigit() else (1, 0, cid)


def _prompt_matrix(url: str) -> tuple[list[str], np.ndarray]:
    """Class ids in order and the [classes, templates, d] prompt embeddings of a class_prompts output."""
    from egoray.stages.text import load_text_embeddings

    ids, mat = load_text_embeddings(url)
    by_class: dict[str, dict[int, int]] = {}
    for row, pid in enumerate(ids):
        cid, sep, t = pid.rpartition(":")
        if not sep or not t.isdigit():
            raise InputError(f"{url}: prompt id {pid!r} is not <class>:<template>; embed a class list with templates")
        by_class.setdefault(cid, {})[int(t)] = row
    sizes = {len(v) for v in by_class.values()}
    if len(sizes) != 1:
        raise InputError(f"{url}: classes have different numbers of templates {sorted(sizes)}")
    order = sorted(by_class, key=_class_key)
    rows = np.array([[by_class[c][t] for t in sorted(by_class[c])] for c in order])
    return order, mat[rows]


def zeroshot_clips(batch: pa.Table) -> pa.Table:
    """Clip rows (``video_uid, t_start, t_end, label[, clip_id]``) keyed by ``clip_id``, else
    ``<video_uid>_<t_start>_<t_end>`` (features keyed by clip id are the clip's own)."""
    if "clip_id" in batch.column_names:
        return batch.append_column("id", pc.cast(batch["clip_id"], pa.string())).drop_columns(["clip_id"])
    from egoray.data.videos import clip_key

    ids = [clip_key(v, a, b) for v, a, b in zip(batch["video_uid"].to_pylist(), batch["t_start"].to_pylist(),
                                                batch["t_end"].to_pylist(), strict=True)]
    return batch.append_column("id", pa.array(ids, pa.string()))


def zeroshot(cfg: ZeroShotSection, clips: str) -> SectionResult:
    """Top-1/top-5 accuracy (one label per clip) or mAP (a list of labels per clip).

    ``clips``: the labelled clips with their pooled video feature, built per video by the eval job.
    """
    from egoray.data.labels import read_labels as read_class_list
    from egoray.eval.zeroshot import expand_templates, read_class_names

    if cfg.class_prompts:
        class_ids, prompts = _prompt_matrix(cfg.class_prompts)
        run = storage.read_json(storage.join(cfg.class_prompts, "run.json")) if storage.exists(
            storage.join(cfg.class_prompts, "run.json")) else {}
        class_list = (run.get("config") or {}).get("input")
        names = dict(read_class_list(class_list)) if class_list else {}
        label_of = [names.get(c, c) for c in class_ids]
    else:
        label_of = read_class_names(cfg.classes)
        prompts = embed_texts(expand_templates(label_of, cfg.templates), cfg.text_features, cfg.encoder)
        prompts = prompts.reshape(len(label_of), len(cfg.templates), -1)
    return classify(label_of, prompts, cfg.model, clips, str(cfg.class_prompts or cfg.classes), cfg.clips)


def classify(label_of: list[str], prompts: np.ndarray, model_url: str | None, clips: str, prompt_source: str,
             clips_source: str) -> SectionResult:
    """Zero-shot classification of the pooled ``clips`` by ``prompts`` [classes, templates, d]:
    top-1/top-5 and mean-class accuracy (one label per clip) or mAP (a list of labels)."""
    from egoray.eval.zeroshot import class_embeddings, mean_class_accuracy, multilabel_map, topk_accuracy

    index = {name.lower(): i for i, name in enumerate(label_of)}
    n_cls, n_tpl, dim = prompts.shape
    model = None
    if model_url:
        from egoray.models.dual_encoder import load_dual_encoder

        model = load_dual_encoder(model_url)
        if model.config.text_dim != dim:
            raise InputError(f"{prompt_source}: prompts are {dim}-d but the model's text head takes "
                             f"{model.config.text_dim}-d; embed the classes with the encoder the model trained on")
        prompts = _encode(model, text=prompts.reshape(-1, dim)).reshape(n_cls, n_tpl, -1)
    classes = class_embeddings(prompts.reshape(n_cls * n_tpl, -1), n_cls)

    table, rejects, total = read_pooled(clips, ["id", "video_uid", "t_start", "t_end", "label", "video"])
    rows = table.to_pylist()
    keep, targets = [], []
    multilabel = pa.types.is_list(table["label"].type) if table.num_rows else False
    for i, r in enumerate(rows):
        labels = r["label"] if isinstance(r["label"], list) else [r["label"]]
        known = [index.get(str(x).lower()) for x in labels]
        if None in known or (not known and not multilabel):  # a video with no action: negative for every class
            rejects.append(_reject(r["id"], "zeroshot", "unknown_label", f"{labels} not in the class list"))
        else:
            keep.append(i)
            targets.append(known)
    if not keep:
        raise InputError(f"{clips_source}: no clip has video features and a known class")
    video = _matrix(table["video"].take(pa.array(keep, pa.int64())))
    if model is not None:
        video = _encode(model, video=video)
    elif video.shape[1] != classes.shape[1]:
        raise InputError(f"video features are {video.shape[1]}-d and prompts {classes.shape[1]}-d: without a "
                         "model both must come from one CLIP-style model")
    video = unit_rows(video)
    scores = video @ classes.T
    metrics: dict[str, Any] = {"clips": len(keep), "classes": n_cls, "templates": n_tpl,
                               "space": "dual_encoder" if model is not None else "raw"}
    if multilabel:
        y = np.zeros((len(keep), n_cls), dtype=bool)
        for row, t in enumerate(targets):
            y[row, t] = True
        metrics["mAP"] = multilabel_map(scores, y)
        metrics["chance_mAP"] = float(y[:, y.any(0)].mean(0).mean())
    else:
        labels_arr = np.array([t[0] for t in targets])
        metrics.update(topk_accuracy(scores, labels_arr, (1, 5)))
        metrics["mean_class_accuracy"] = mean_class_accuracy(scores, labels_arr)
        metrics["chance_top1"] = 1.0 / n_cls
        metrics["chance_top5"] = min(5, n_cls) / n_cls
    best = scores.argmax(1)
    samples = [{"clip": f"{rows[i]['video_uid'][:8]} {rows[i]['t_start']:.1f}-{rows[i]['t_end']:.1f}s",
                "label": str(rows[i]["label"]), "predicted": label_of[best[j]]} for j, i in enumerate(keep[:12])]
    counts = {"in": int(total), "out": len(keep), "rejected": len(rejects)}
    return SectionResult(metrics, counts, rejects, samples)


def text_encoder_of(text_features: str | None, encoder: TextEncoderConfig | None = None) -> Any:
    """The encoder a text_features output was made with (from its run.json), or ``encoder``."""
    from egoray.features.text import TextEncoder

    if encoder is None:
        run_url = storage.join(text_features, "run.json")
        if not storage.exists(run_url):
            raise InputError(f"{text_features}: no run.json to take the text encoder from")
        encoder = TextEncoderConfig(**storage.read_json(run_url)["config"]["encoder"])
    return TextEncoder(encoder, device="cpu")


def embed_texts(texts: list[str], text_features: str | None, encoder: TextEncoderConfig | None = None) -> np.ndarray:
    return text_encoder_of(text_features, encoder).encode(texts).astype(np.float32)


def narration_references(refs: pa.Table, windows: pa.Table) -> dict[str, list[str]]:
    """Texts of the narrations whose time falls inside each window (same video)."""
    by_video: dict[str, tuple[np.ndarray, list[str]]] = {}
    r = refs.select(["video_uid", "t_start", "t_end", "text"]).to_pydict()
    mid = (np.asarray(r["t_start"], dtype=np.float64) + np.asarray(r["t_end"], dtype=np.float64)) / 2
    for v in set(r["video_uid"]):
        sel = [i for i, x in enumerate(r["video_uid"]) if x == v]
        by_video[v] = (mid[sel], [r["text"][i] for i in sel])
    out = {}
    for w in windows.to_pylist():
        times, texts = by_video.get(w["video_uid"], (np.zeros(0), []))
        inside = np.flatnonzero((times >= w["t_start"]) & (times <= w["t_end"]))
        out[w["window_id"]] = [texts[i] for i in inside if texts[i]]
    return out


BLIND_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _blind_baseline(pool: pa.Array | pa.ChunkedArray, refs: dict[str, list[str]], tokenizer: str) -> dict[str, Any]:
    """What a captioner that never looks at the video scores: the most frequent training text
    (``blind_text``; ties: the first seen) given for every item, its metrics as ``blind_<metric>``."""
    from egoray.eval.captioning import score_captions

    texts = pc.drop_null(pool)
    counts = pc.value_counts(texts.filter(pc.not_equal(texts, ""))).flatten()  # in order of first appearance
    if not len(counts[0]):
        return {}
    text = counts[0][int(pc.index(counts[1], pc.max(counts[1])).as_py())].as_py()
    scores = score_captions(dict.fromkeys(refs, text), refs, tokenizer)
    return {"blind_text": text, **{f"blind_{k}": scores[k] for k in BLIND_METRICS if k in scores}}


def captioning(cfg: CaptioningSection) -> SectionResult:
    from egoray.data.narrations import load_narrations
    from egoray.eval.captioning import score_captions

    table_url = storage.join(cfg.predictions, "captions")
    try:
        preds = storage.read_parquet(table_url)
    except storage.StorageError as e:
        raise InputError(f"cannot read predictions: {e}") from None
    if cfg.kind == "narrations":
        if "window_id" not in preds.column_names:
            raise InputError(f"{cfg.predictions}: not a narrate output (no window_id)")
        first = preds.filter(pc.equal(preds["k"], 0))
        narrations = load_narrations(cfg.references)
        if cfg.protocol == "lavila":  # one reference: the narration the window was made from
            refs = {nid: [text] for nid, text in zip(narrations["narration_id"].to_pylist(),
                                                     narrations["text"].to_pylist(), strict=True)}
        else:
            refs = narration_references(narrations, first)
        pred = dict(zip(first["window_id"].to_pylist(), first["text"].to_pylist(), strict=True))
        train = narrations.filter(pc.equal(narrations["split"], "train")) if "split" in narrations.column_names \
            else narrations
        blind_pool = (train if train.num_rows else narrations)["text"]
    else:
        if "summary" not in preds.column_names:
            raise InputError(f"{cfg.predictions}: not a captions output (no summary)")
        summaries_url = storage.join(cfg.references, "summaries")
        if not storage.exists(summaries_url):
            raise InputError(f"{cfg.references}: has no summaries/ table to compare with")
        s = storage.read_parquet(summaries_url).to_pydict()
        refs = {}
        for v, text in zip(s["video_uid"], s["text"], strict=True):
            if text:
                refs.setdefault(v, []).append(text)
        pred = dict(zip(preds["video_uid"].to_pylist(), preds["summary"].to_pylist(), strict=True))
        # the blind baseline's pool: summaries of other videos than the predicted ones, if any
        blind_pool = pa.array([t for v, ts in refs.items() if v not in pred for t in ts]
                              or [t for ts in refs.values() for t in ts], pa.string())
    refs = {k: v for k, v in refs.items() if v}
    scored = {k: refs[k] for k in pred if k in refs}
    rejects = [_reject(k, f"captioning-{cfg.name}", "no_reference", "no human text to compare with")
               for k in pred if k not in scored]
    if not scored:
        raise InputError(f"{cfg.name}: no prediction has a reference to compare with")
    tokenizer = "lavila" if cfg.protocol == "lavila" else cfg.tokenizer
    metrics = {**score_captions({k: pred[k] for k in scored}, scored, tokenizer), "protocol": cfg.protocol}
    metrics.update(_blind_baseline(blind_pool, scored, tokenizer))
    samples = [{"id": k, "generated": pred[k], "reference": scored[k][0]} for k in list(scored)[:12]]
    counts = {"in": len(pred), "out": len(scored), "rejected": len(pred) - len(scored)}
    return SectionResult(metrics, counts, rejects, samples)


def mcq(cfg: MCQSection, moments: str) -> SectionResult:
    """Options scored by the cosine of the moment's video embedding and "question answer" text.

    ``moments``: the questions with their moment's pooled video feature, built per video by the
    eval job.
    """
    from egoray.eval.mcq import mcq_accuracy
    from egoray.models.dual_encoder import load_dual_encoder

    encoder = text_encoder_of(cfg.text_features)
    model = load_dual_encoder(cfg.model)
    table, rejects, total = read_pooled(moments, ["id", "question", "answer", "wrong_answers", "video"])
    if table.num_rows == 0:
        raise InputError(f"{cfg.qa}: no question's video has features")
    rows = table.select(["question", "answer", "wrong_answers"]).to_pylist()
    n_opt = {1 + len(r["wrong_answers"]) for r in rows}
    if len(n_opt) != 1:
        raise InputError(f"{cfg.qa}: questions have different numbers of options {sorted(n_opt)}")
    texts = [f"{r['question']} {a}" for r in rows for a in [r["answer"], *r["wrong_answers"]]]
    text = _encode(model, text=encoder.encode(texts).astype(np.float32))
    video = _encode(model, video=_matrix(table["video"]))
    options = text.reshape(len(rows), n_opt.pop(), -1)
    scores = np.einsum("qd,qod->qo", video, options)
    metrics = mcq_accuracy(scores, np.zeros(len(rows), dtype=np.int64))
    samples = [{"question": r["question"], "answer": r["answer"], "wrong_answers": " | ".join(r["wrong_answers"]),
                "chosen": [r["answer"], *r["wrong_answers"]][int(scores[j].argmax())]}
               for j, r in enumerate(rows[:8])]
    counts = {"in": int(total), "out": len(rows), "rejected": len(rejects)}
    return SectionResult(metrics, counts, rejects, samples)


def egomcq(cfg: EgoMCQSection, choices: str) -> SectionResult:
    """EgoMCQ accuracy, inter- and intra-video: each query's text against its choices' clips.

    ``choices``: one row per (question, choice) with the clip's pooled video feature, built per
    video by the eval job. A question with a choice whose video has no features is rejected.
    """
    from egoray.eval.mcq import egomcq_accuracy

    table, rejects, _ = read_pooled(choices, ["id", "question_id", "choice", "query", "answer", "intra", "video"])
    lost = {r["record_id"].rpartition(":")[0] for r in rejects}
    table = table.filter(pa.array([q not in lost for q in table["question_id"].to_pylist()], pa.bool_())) \
        if lost else table
    questions: dict[str, dict[str, Any]] = {}
    vectors = _matrix(table["video"]) if table.num_rows else np.zeros((0, 0), np.float32)
    for i, r in enumerate(table.select(["question_id", "choice", "query", "answer", "intra"]).to_pylist()):
        q = questions.setdefault(r["question_id"], {"query": r["query"], "answer": r["answer"], "intra": r["intra"],
                                                    "rows": {}})
        q["rows"][r["choice"]] = i
    if not questions:
        raise InputError(f"{cfg.egomcq}: no question has features for all its choices")
    order = sorted(questions, key=_question_key)
    n_opt = {len(questions[q]["rows"]) for q in order}
    if len(n_opt) != 1:
        raise InputError(f"{cfg.egomcq}: questions have different numbers of choices {sorted(n_opt)}")
    n = n_opt.pop()
    text = embed_texts([questions[q]["query"] for q in order], cfg.text_features, cfg.encoder)
    video = vectors[[questions[q]["rows"][k] for q in order for k in range(n)]]
    if cfg.model:
        from egoray.models.dual_encoder import load_dual_encoder

        model = load_dual_encoder(cfg.model)
        text, video = _encode(model, text=text.astype(np.float32)), _encode(model, video=video)
    elif video.shape[1] != text.shape[1]:
        raise InputError(f"video features are {video.shape[1]}-d and query embeddings {text.shape[1]}-d: without a "
                         "model both must come from one joint space")
    video, text = unit_rows(video), unit_rows(text)
    scores = np.einsum("qd,qod->qo", text, video.reshape(len(order), n, -1))
    answers = np.array([questions[q]["answer"] for q in order], dtype=np.int64)
    intra = np.array([questions[q]["intra"] for q in order], dtype=bool)
    metrics: dict[str, Any] = {"questions": len(order), "space": "dual_encoder" if cfg.model else "raw",
                               **egomcq_accuracy(scores, answers, intra)}
    samples = [{"question": q, "query": questions[q]["query"], "intra_video": bool(questions[q]["intra"]),
                "answer": int(answers[j]), "chosen": int(scores[j].argmax())} for j, q in enumerate(order[:8])]
    question_rejects = [_reject(q, "egomcq", "no_video_features", "a choice's video has no features")
                        for q in sorted(lost)]
    counts = {"in": len(order) + len(lost), "out": len(order), "rejected": len(lost)}
    return SectionResult(metrics, counts, question_rejects, samples)


def _question_key(qid: str) -> tuple[int, int | str]:
    return (0, int(qid)) if qid.isdigit() else (1, qid)


def egtea(cfg: EGTEASection, clips: str) -> SectionResult:
    """EGTEA zero-shot: the clips of the split against the action names under the templates."""
    from egoray.data.benchmarks import read_egtea_classes
    from egoray.eval.zeroshot import expand_templates

    label_of = read_egtea_classes(storage.read_bytes(cfg.classes), cfg.classes)
    prompts = embed_texts(expand_templates(label_of, cfg.templates), cfg.text_features, cfg.encoder)
    prompts = prompts.reshape(len(label_of), len(cfg.templates), -1)
    return classify(label_of, prompts, cfg.model, clips, cfg.classes, cfg.split)


def gap(cfg: GapSection, dual_pairs: tuple[np.ndarray, np.ndarray] | None) -> SectionResult:
    """Gap metrics and plots of each configured source of pairs."""
    from egoray.eval.gap import modality_gap, plot_gap
    from egoray.stages.text import embedding_matrix

    metrics: dict[str, Any] = {}
    plots: dict[str, bytes] = {}
    sources: dict[str, tuple[np.ndarray, np.ndarray, tuple[str, str]]] = {}
    if "dual_encoder" in cfg.sources:
        if dual_pairs is None:
            raise InputError("gap source dual_encoder needs the retrieval section")
        sources["dual_encoder"] = (*dual_pairs, ("video", "narration"))
    if "captions" in cfg.sources:
        if not cfg.captions:
            raise InputError("gap source captions needs gap.captions (a captions output)")
        t = storage.read_parquet(storage.join(cfg.captions, "captions"), columns=["image_embedding", "summary_embedding"])
        sources["captions"] = (embedding_matrix(t["image_embedding"]), embedding_matrix(t["summary_embedding"]),
                               ("frames (mean)", "summary"))
    n = 0
    for name, (a, b, labels) in sources.items():
        if a.shape != b.shape:
            raise InputError(f"gap source {name}: the two modalities have shapes {a.shape} and {b.shape}")
        metrics[name] = modality_gap(a, b)
        n += len(a)
        for method in cfg.plots:
            if len(a) < 4 and method == "umap":
                continue
            plots[f"gap_{name}_{method}.png"] = plot_gap(a, b, method, labels, f"{name}: {method} ({len(a)} pairs)")
    return SectionResult(metrics, {"in": n, "out": n, "rejected": 0}, plots=plots)
