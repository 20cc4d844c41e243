"""The zeroshot section: labelled clips named by their similarity to class prompts."""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import Url
from egoray.data.raw import InputError
from egoray.eval.sections.common import QueryEncoder, SectionResult, embed_texts, encode, fmt, matrix, reject
from egoray.eval.sections.pooled import Pooled, no_items, read_input, read_pooled
from egoray.eval.zeroshot import DEFAULT_TEMPLATES
from egoray.features.vectors import unit_rows


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


def _class_key(cid: str) -> tuple[int, int, str]:
    """Class-id order: numeric ids (``12``) and Charades codes (``c012``) by number."""
    digits = cid[1:] if cid[:1] == "c" else cid
    return (0, int(digits), cid) if digits.isdigit() else (1, 0, cid)


def _promptmatrix(url: str) -> tuple[list[str], np.ndarray]:
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


def pooled(cfg: ZeroShotSection) -> Pooled:
    """The labelled clips (a table, or a benchmark's file read by a worker), of the videos in
    ``splits`` where ``video_splits`` is set, each with its window's video feature."""
    videos = None
    if cfg.video_splits:
        from egoray.data.splits import read_splits

        videos = sorted(v for v, split in read_splits(cfg.video_splits).items() if split in cfg.splits)
    table = cfg.clips if cfg.clips_format == "table" else None
    return Pooled(cfg.video_features, table=table, benchmark=None if table else partial(read_clips, cfg),
                  require=("label", "t_end", "t_start", "video_uid"), optional=("clip_id",),
                  per_batch=zeroshot_clips, videos=videos)


def read_clips(cfg: ZeroShotSection) -> pa.Table:
    """A benchmark's clip file as a table (Kinetics' val.csv; Charades-Ego's test CSV, its class
    codes as the class list's names)."""
    from egoray.data import benchmarks

    if cfg.clips_format == "kinetics_csv":
        table = benchmarks.read_kinetics_csv(read_input(cfg.clips), cfg.clips)
    else:
        from egoray.data.labels import read_labels

        table = benchmarks.read_charades_ego_csv(read_input(cfg.clips), dict(read_labels(cfg.classes)),
                                                 cfg.charades_subset, cfg.clips)
    return no_items(table, cfg.clips, "zeroshot")


def zeroshot_clips(batch: pa.Table) -> pa.Table:
    """Clip rows (``video_uid, t_start, t_end, label[, clip_id]``) keyed by ``clip_id``, else
    ``<video_uid>_<t_start>_<t_end>`` (features keyed by clip id are the clip's own)."""
    if "clip_id" in batch.column_names:
        return batch.append_column("id", pc.cast(batch["clip_id"], pa.string())).drop_columns(["clip_id"])
    from egoray.data.videos import clip_key

    ids = [clip_key(v, a, b) for v, a, b in zip(batch["video_uid"].to_pylist(), batch["t_start"].to_pylist(),
                                                batch["t_end"].to_pylist(), strict=True)]
    return batch.append_column("id", pa.array(ids, pa.string()))


def compute(cfg: ZeroShotSection, clips: str) -> SectionResult:
    """Top-1/top-5 accuracy (one label per clip) or mAP (a list of labels per clip).

    ``clips``: the labelled clips with their pooled video feature, built per video by the eval job.
    """
    from egoray.data.labels import read_labels as read_class_list
    from egoray.eval.zeroshot import expand_templates, read_class_names

    if cfg.class_prompts:
        class_ids, prompts = _promptmatrix(cfg.class_prompts)
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
        prompts = encode(model, text=prompts.reshape(-1, dim)).reshape(n_cls, n_tpl, -1)
    classes = class_embeddings(prompts.reshape(n_cls * n_tpl, -1), n_cls)

    table, rejects, total = read_pooled(clips, ["id", "video_uid", "t_start", "t_end", "label", "video"])
    rows = table.to_pylist()
    keep, targets = [], []
    multilabel = pa.types.is_list(table["label"].type) if table.num_rows else False
    for i, r in enumerate(rows):
        labels = r["label"] if isinstance(r["label"], list) else [r["label"]]
        known = [index.get(str(x).lower()) for x in labels]
        if None in known or (not known and not multilabel):  # a video with no action: negative for every class
            rejects.append(reject(r["id"], "zeroshot", "unknown_label", f"{labels} not in the class list"))
        else:
            keep.append(i)
            targets.append(known)
    if not keep:
        raise InputError(f"{clips_source}: no clip has video features and a known class")
    video = matrix(table["video"].take(pa.array(keep, pa.int64())))
    if model is not None:
        video = encode(model, video=video)
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


def note(m: dict[str, Any]) -> str:
    if "mAP" in m:
        return (f"mAP of ranking {fmt(m.get('classes', '?'))} classes for each held-out clip by its similarity to their "
                f"prompts; chance (every class equally likely) = {fmt(m.get('chance_mAP', '?'))}.")
    return (f"top-k accuracy of naming each held-out clip's class among {fmt(m.get('classes', '?'))} by the similarity "
            f"of its video to the class prompts; chance top-1 = {fmt(m.get('chance_top1', '?'))}, "
            f"top-5 = {fmt(m.get('chance_top5', '?'))}.")


HEADLINES = [('top1', 'chance_top1', 'chance', 'zero-shot top-1'), ('mAP', 'chance_mAP', 'chance', 'zero-shot mAP')]  # (metric, the level it has to beat, that level's name, title)


def headlines(section: str, m: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    return [(title, float(m[key]), float(m[base]), name) for key, base, name, title in HEADLINES
            if isinstance(m.get(key), (int, float)) and isinstance(m.get(base), (int, float))]
