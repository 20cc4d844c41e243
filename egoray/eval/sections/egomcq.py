"""The egomcq section: EgoMCQ inter- and intra-video accuracy (EgoVLP / LaViLa)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from egoray.config import Url
from egoray.data.raw import InputError
from egoray.eval.sections.common import QueryEncoder, SectionResult, embed_texts, encode, matrix, reject
from egoray.eval.sections.pooled import Pooled, no_items, read_input, read_pooled
from egoray.features.vectors import unit_rows


class EgoMCQSection(QueryEncoder):
    """EgoMCQ (EgoVLP / LaViLa): pick the clip a narration describes among 5, inter- and intra-video."""

    egomcq: Url = Field(description="egomcq.json")
    video_features: Url = Field(description="features of the choices' videos (keyed by video uid)")
    model: Url | None = Field(None, description="a train_dual_encoder output; none: one joint space")

    @model_validator(mode="after")
    def _one_encoder(self) -> EgoMCQSection:
        self.check_one_encoder("egomcq")
        return self


def pooled(cfg: EgoMCQSection) -> Pooled:
    """Every choice clip of egomcq.json (read by a worker), with its video feature."""
    return Pooled(cfg.video_features, benchmark=partial(read_choices, cfg))


def read_choices(cfg: EgoMCQSection) -> pa.Table:
    from egoray.data.benchmarks import read_egomcq

    return no_items(read_egomcq(read_input(cfg.egomcq), cfg.egomcq), cfg.egomcq, "egomcq")


def compute(cfg: EgoMCQSection, choices: str) -> SectionResult:
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
    vectors = matrix(table["video"]) if table.num_rows else np.zeros((0, 0), np.float32)
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
        text, video = encode(model, text=text.astype(np.float32)), encode(model, video=video)
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
    question_rejects = [reject(q, "egomcq", "no_video_features", "a choice's video has no features")
                        for q in sorted(lost)]
    counts = {"in": len(order) + len(lost), "out": len(order), "rejected": len(lost)}
    return SectionResult(metrics, counts, question_rejects, samples)


def _question_key(qid: str) -> tuple[int, int | str]:
    return (0, int(qid)) if qid.isdigit() else (1, qid)


def note(m: dict[str, Any]) -> str:
    return ("accuracy of picking the clip a narration describes among 5 (inter: clips of other videos; intra: of "
            "the same video); chance = 0.2.")
