"""One line under each metric table of the report: what the numbers measure and the level they
must beat (chance, or a baseline computed from the same data)."""

from __future__ import annotations

from typing import Any


def _f(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _retrieval(m: dict[str, Any]) -> str:
    line = (f"R@k: the share of the {_f(m.get('items', '?'))} held-out narrations whose own clip ranks in the top k "
            f"of all clips (t2v: text → video; v2t: the reverse); chance R@1 = {_f(m.get('chance_R@1', '?'))}.")
    if "mir_avg_mAP" in m:
        line += (" MIR mAP / nDCG: EPIC-KITCHENS-100's ranking scores with partial relevance from shared verbs and "
                 f"nouns; scores that cannot tell clips apart get mAP {_f(m.get('mir_avg_mAP_constant_scores', '?'))}.")
    return line


def _zeroshot(m: dict[str, Any]) -> str:
    if "mAP" in m:
        return (f"mAP of ranking {_f(m.get('classes', '?'))} classes for each held-out clip by its similarity to their "
                f"prompts; chance (every class equally likely) = {_f(m.get('chance_mAP', '?'))}.")
    return (f"top-k accuracy of naming each held-out clip's class among {_f(m.get('classes', '?'))} by the similarity "
            f"of its video to the class prompts; chance top-1 = {_f(m.get('chance_top1', '?'))}, "
            f"top-5 = {_f(m.get('chance_top5', '?'))}.")


def _captioning(m: dict[str, Any]) -> str:
    against = ("the narration its window was made from (LaViLa's protocol)" if m.get("protocol") == "lavila" else
               "the human narrations inside its window (summaries: the video's human summaries)")
    line = ("BLEU, METEOR, ROUGE-L (0–1) and CIDEr (0–10, consensus with the human texts weighted by how rare "
            f"their words are) of the first generated text of each of {_f(m.get('items', '?'))} items against "
            f"{against}.")
    if "blind_CIDEr" in m:
        line += (f" Video-blind baseline — “{m.get('blind_text', '')}”, the most frequent training text, for every "
                 f"item: CIDEr {_f(m['blind_CIDEr'])}, BLEU-4 {_f(m.get('blind_BLEU-4', '?'))}.")
    return line


def _mcq(m: dict[str, Any]) -> str:
    return (f"accuracy of picking the true answer of {_f(m.get('questions', '?'))} multiple-choice questions by the "
            f"similarity of the moment's video to question + option; chance = {_f(m.get('chance', '?'))}.")


def _gap(m: dict[str, Any]) -> str:
    return ("gap_norm: the distance between the centroids of the L2-normalised video (or image) and text "
            "embeddings of paired items (0: the two modalities share one region); cos_paired against cos_unpaired: "
            "true pairs against all other pairs (equal: pairing is not encoded); the plots below project both to 2-D.")


def _egomcq(m: dict[str, Any]) -> str:
    return ("accuracy of picking the clip a narration describes among 5 (inter: clips of other videos; intra: of "
            "the same video); chance = 0.2.")


def _egtea(m: dict[str, Any]) -> str:
    return "top-1 and mean-class accuracy of zero-shot action recognition; chance = 1 / classes."


NOTES = {"retrieval": _retrieval, "zeroshot": _zeroshot, "captioning": _captioning, "mcq": _mcq, "gap": _gap,
         "egomcq": _egomcq, "egtea": _egtea}


def metric_note(section: str, metrics: dict[str, Any]) -> str:
    """The line for an eval section (``captioning-narrator`` uses the captioning note); a section
    without a note of its own lists whatever chance or baseline keys its metrics hold."""
    note = NOTES.get(section.split("-", 1)[0])
    if note is not None:
        return note(metrics)
    levels = {k: v for k, v in metrics.items() if any(s in k for s in ("chance", "blind", "constant"))}
    return "; ".join(f"{k} = {_f(v)}" for k, v in levels.items()) or "no chance level recorded for this section."


def training_note(rows: list[dict[str, Any]]) -> str:
    """The line under the training table: what each column is and the chance R@1 where known."""
    chance = sorted({_f(r[k]) for r in rows for k in r if k.startswith("chance_R@1") and r.get(k) != ""})
    line = ("loss: training cross-entropy (lower is better), eval_loss: the same on held-out items; "
            "R@1: held-out retrieval as above")
    return line + (f"; chance R@1 = {', '.join(chance)}." if chance else ".")
