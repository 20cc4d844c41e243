"""The mcq section: ClosedQA multiple-choice accuracy, the answers ranked by a dual encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.eval.sections.common import SectionResult, encode, fmt, matrix, text_encoder_of
from egoray.eval.sections.pooled import Pooled, read_pooled


class MCQSection(StrictModel):
    """Multiple-choice accuracy on ClosedQA sets, the answers ranked by a dual encoder."""

    qa: Url = Field(description="a qa output")
    model: Url = Field(description="a train_dual_encoder output")
    video_features: Url
    text_features: Url = Field(description="the text_features output the model trained on (its encoder is reused)")


def pooled(cfg: MCQSection) -> Pooled:
    """The questions of the qa output, each with its moment's video feature (one item per group)."""
    table = storage.join(cfg.qa, "qa")
    return Pooled(cfg.video_features, table=table, per_batch=id_from_group,
                  require=("group_id", "video_uid", "t_start", "t_end", "question", "answer", "wrong_answers"))


def id_from_group(batch: pa.Table) -> pa.Table:
    return batch.append_column("id", batch["group_id"])


def compute(cfg: MCQSection, moments: str) -> SectionResult:
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
    text = encode(model, text=encoder.encode(texts).astype(np.float32))
    video = encode(model, video=matrix(table["video"]))
    options = text.reshape(len(rows), n_opt.pop(), -1)
    scores = np.einsum("qd,qod->qo", video, options)
    metrics = mcq_accuracy(scores, np.zeros(len(rows), dtype=np.int64))
    samples = [{"question": r["question"], "answer": r["answer"], "wrong_answers": " | ".join(r["wrong_answers"]),
                "chosen": [r["answer"], *r["wrong_answers"]][int(scores[j].argmax())]}
               for j, r in enumerate(rows[:8])]
    counts = {"in": int(total), "out": len(rows), "rejected": len(rejects)}
    return SectionResult(metrics, counts, rejects, samples)


def note(m: dict[str, Any]) -> str:
    return (f"accuracy of picking the true answer of {fmt(m.get('questions', '?'))} multiple-choice questions by the "
            f"similarity of the moment's video to question + option; chance = {fmt(m.get('chance', '?'))}.")


HEADLINES = [('accuracy', 'chance', 'chance', 'multiple-choice QA')]  # (metric, the level it has to beat, that level's name, title)


def headlines(section: str, m: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    return [(title, float(m[key]), float(m[base]), name) for key, base, name, title in HEADLINES
            if isinstance(m.get(key), (int, float)) and isinstance(m.get(base), (int, float))]
