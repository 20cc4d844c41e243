"""The captioning sections: generated text against human references (COCO caption metrics)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import StrictModel, Url
from egoray.data.raw import InputError
from egoray.eval.sections.common import SectionResult, fmt, reject


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


def compute(cfg: CaptioningSection, inputs: None = None) -> SectionResult:
    """Read from the jobs' outputs themselves (``inputs``: nothing pooled by the eval job)."""
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
    rejects = [reject(k, f"captioning-{cfg.name}", "no_reference", "no human text to compare with")
               for k in pred if k not in scored]
    if not scored:
        raise InputError(f"{cfg.name}: no prediction has a reference to compare with")
    tokenizer = "lavila" if cfg.protocol == "lavila" else cfg.tokenizer
    metrics = {**score_captions({k: pred[k] for k in scored}, scored, tokenizer), "protocol": cfg.protocol}
    metrics.update(_blind_baseline(blind_pool, scored, tokenizer))
    samples = [{"id": k, "generated": pred[k], "reference": scored[k][0]} for k in list(scored)[:12]]
    counts = {"in": len(pred), "out": len(scored), "rejected": len(pred) - len(scored)}
    return SectionResult(metrics, counts, rejects, samples)


def note(m: dict[str, Any]) -> str:
    against = ("the narration its window was made from (LaViLa's protocol)" if m.get("protocol") == "lavila" else
               "the human narrations inside its window (summaries: the video's human summaries)")
    line = ("BLEU, METEOR, ROUGE-L (0–1) and CIDEr (0–10, consensus with the human texts weighted by how rare "
            f"their words are) of the first generated text of each of {fmt(m.get('items', '?'))} items against "
            f"{against}.")
    if "blind_CIDEr" in m:
        line += (f" Video-blind baseline — “{m.get('blind_text', '')}”, the most frequent training text, for every "
                 f"item: CIDEr {fmt(m['blind_CIDEr'])}, BLEU-4 {fmt(m.get('blind_BLEU-4', '?'))}.")
    return line


def headlines(section: str, m: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    if isinstance(m.get("blind_CIDEr"), (int, float)):
        return [(f"{section.removeprefix('captioning-')} CIDEr", float(m["CIDEr"]), float(m["blind_CIDEr"]), "blind")]
    return []
