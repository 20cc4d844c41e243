"""The retrieval section: held-out text↔video R@k, median rank, MIR mAP / nDCG."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.eval.sections.common import SectionResult, dense, encode, fmt, matrix
from egoray.eval.sections.pooled import Pooled, read_pooled


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


def pooled(cfg: RetrievalSection) -> Pooled:
    """The held-out narrations of the text_features output, each with its window's video feature."""
    return Pooled(cfg.video_features, text_features=(cfg.text_features, list(cfg.splits)),
                  offset=retrieval_offset(cfg), labels=cfg.labels)


def compute(cfg: RetrievalSection, pairs: str) -> SectionResult:
    """R@k / median rank per instance, and MIR mAP / nDCG with a graded relevancy.

    ``pairs``: the held-out narrations with their text embedding and pooled video feature, built
    per video by the eval job (:func:`egoray.train.pairs.build_pairs`).
    """
    from egoray.eval.relevancy import ek100_relevancy, label_relevancy
    from egoray.eval.retrieval import blockwise_ranks, chance_recall_at_1, mir_metrics, recall_at
    from egoray.models.dual_encoder import load_dual_encoder

    table, rejects, total = read_pooled(pairs, ["id", "text", "video", "embedding", "verb_code", "noun_code"])
    if table.num_rows < 2:
        raise InputError(f"only {table.num_rows} held-out narrations have features and embeddings; need 2")
    video, text_emb = matrix(table["video"]), matrix(table["embedding"])
    if cfg.model:
        model = load_dual_encoder(cfg.model)
        video, text_emb = encode(model, video=video), encode(model, text=text_emb)
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
        verb = dense(table["verb_code"].to_numpy(zero_copy_only=False))
        noun = dense(table["noun_code"].to_numpy(zero_copy_only=False))
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


def note(m: dict[str, Any]) -> str:
    line = (f"R@k: the share of the {fmt(m.get('items', '?'))} held-out narrations whose own clip ranks in the top k "
            f"of all clips (t2v: text → video; v2t: the reverse); chance R@1 = {fmt(m.get('chance_R@1', '?'))}.")
    if "mir_avg_mAP" in m:
        line += (" MIR mAP / nDCG: EPIC-KITCHENS-100's ranking scores with partial relevance from shared verbs and "
                 f"nouns; scores that cannot tell clips apart get mAP {fmt(m.get('mir_avg_mAP_constant_scores', '?'))}.")
    return line


HEADLINES = [('t2v_R@1', 'chance_R@1', 'chance', 'text→video R@1')]  # (metric, the level it has to beat, that level's name, title)


def headlines(section: str, m: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    return [(title, float(m[key]), float(m[base]), name) for key, base, name, title in HEADLINES
            if isinstance(m.get(key), (int, float)) and isinstance(m.get(base), (int, float))]
