"""``captions`` job (seed 002): CoCa frame captions → de-duplicated → one LLM summary per video.

Per video: frames sampled with PyAV (``sampling``), captioned by an open_clip CoCa model; the
captions are embedded by CoCa's text tower and near-identical ones clustered away (one kept per
cluster, time order kept); the kept captions go through the summary step (few-shot LLM prompt,
:mod:`egoray.llm.summary`); the summary is embedded by the same CoCa text tower. Output::

    OUTPUT/captions/part-<shard>.parquet  video_uid, frame_times, frame_captions, kept_captions,
                                          summary, image_embedding (frame mean, CoCa image tower),
                                          summary_embedding (CoCa text tower), models
    OUTPUT/rejects/part-<shard>.parquet   unreadable videos (stage caption), failed summaries
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from egoray.config import JobConfig
from egoray.data.schema import REJECTS
from egoray.features.captions import CaptionOptions, CocaCaptioner, dedupe_captions
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import SummaryPrompts
from egoray.llm.retry import collect
from egoray.llm.summary import summarise
from egoray.models.clip import ClipModel
from egoray.pipelines.video_features import Sampling, list_videos
from egoray.runtime import ShardLedger, assign_shards, dataset_from_table, ensure_ray, finish, waves

CAPTIONS = pa.schema(
    [
        ("video_uid", pa.string()),
        ("frame_times", pa.list_(pa.float64())),
        ("frame_captions", pa.list_(pa.string())),
        ("kept_captions", pa.list_(pa.string())),
        ("summary", pa.string()),
        ("image_embedding", pa.list_(pa.float32())),
        ("summary_embedding", pa.list_(pa.float32())),
        ("caption_model", pa.string()),
        ("summary_model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


class Config(JobConfig):
    """Config of the ``captions`` job."""

    job: Literal["captions"] = "captions"
    format: Literal["auto", "folder", "table"] = "auto"
    sampling: Sampling = Sampling(fps=1.0)
    coca: ClipModel = ClipModel(name="tiny-coca")
    caption: CaptionOptions = CaptionOptions()
    dedupe_threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity that makes captions one")
    summary_engine: EngineConfig = EngineConfig(model="tiny:llama")
    summary_params: GenerationParams = GenerationParams(max_new_tokens=48, temperature=0.7)
    summary_prompts: SummaryPrompts = SummaryPrompts()
    max_attempts: int = Field(3, ge=1)
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    num_shards: int = Field(4, ge=1, le=4096)
    shards_per_wave: int = Field(4, ge=1)


class CaptionActor:
    """Decode, caption, embed captions, de-duplicate, mean image embedding — per video."""

    def __init__(self, coca: dict, caption: dict, sampling: dict, threshold: float, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = CocaCaptioner(ClipModel(**coca), CaptionOptions(**caption))
        self.sampling = Sampling(**sampling)
        self.threshold = threshold

    def __call__(self, batch: pa.Table) -> pa.Table:
        from egoray import storage
        from egoray.video.decode import VideoError, iter_frames, probe, sample_times

        rows = []
        for row in batch.to_pylist():
            try:
                with storage.local_copy(row["path"]) as local:
                    info = probe(local)
                    start = row["t_start"] or 0.0
                    end = row["t_end"] if row["t_end"] is not None else info.duration
                    if end <= start:
                        raise VideoError("empty", "zero-length video or window")
                    times = sample_times(start, end, rate=self.sampling.fps, num_frames=self.sampling.num_frames)
                    # Stream: caption and embed a batch of frames at a time (bounded memory).
                    captions, image_sum, pending = [], None, []
                    frames = (f for _, f in iter_frames(local, times, self.model.size))
                    for frame in itertools.chain(frames, [None]):
                        if frame is not None:
                            pending.append(frame)
                        if pending and (frame is None or len(pending) == self.model.options.batch_size):
                            stack = np.stack(pending)
                            captions += self.model.caption(stack, seed=len(rows) * 100_003 + len(captions))
                            emb = self.model.encode(stack, normalize=True).sum(0)
                            image_sum = emb if image_sum is None else image_sum + emb
                            pending = []
                text_emb = self.model.encode_texts(captions)
                kept = dedupe_captions(captions, text_emb, self.threshold)
                image = image_sum / max(1, len(captions))
                rows.append({"key": row["key"], "times": times.tolist(), "captions": captions,
                             "kept": [captions[i] for i in kept], "image": image.astype(np.float32).tolist(),
                             "reason": None, "detail": None})
            except (VideoError, storage.StorageError) as e:
                rows.append({"key": row["key"], "times": None, "captions": None, "kept": None, "image": None,
                             "reason": getattr(e, "reason", "unreadable"), "detail": str(e)[:500]})
        return pa.Table.from_pylist(rows, schema=pa.schema([
            ("key", pa.string()), ("times", pa.list_(pa.float64())), ("captions", pa.list_(pa.string())),
            ("kept", pa.list_(pa.string())), ("image", pa.list_(pa.float32())), ("reason", pa.string()),
            ("detail", pa.string())]))


class CocaTextActor:
    """CoCa text-tower embeddings of summaries (the same weights as the image embeddings)."""

    def __init__(self, coca: dict, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = CocaCaptioner(ClipModel(**coca), CaptionOptions())

    def __call__(self, batch: pa.Table) -> pa.Table:
        emb = self.model.encode_texts(batch["summary"].to_pylist())
        return batch.append_column("embedding", pa.array([e.astype(np.float32).tolist() for e in emb],
                                                         pa.list_(pa.float32())))


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:

    wall0 = time.perf_counter()
    videos = list_videos(config.input, config.format)
    shard_ids, by_shard = assign_shards(videos, "key", config.num_shards)
    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, items=[f"{v['key']}\t{v['path']}" for v in videos])
    done_before = ledger.completed()
    ensure_ray(config.ray)
    caption_model = f"{config.coca.name}:{config.coca.pretrained or 'random'}"
    resources = {"concurrency": config.num_actors, "num_cpus": config.cpus_per_actor,
                 "num_gpus": config.gpus_per_actor or None, "batch_format": "pyarrow"}
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        todo = [v for s in wave for v in by_shard[s]]
        print(f"[captions] wave {w}/{len(plan)}: {len(todo)} videos", flush=True)
        t0 = time.perf_counter()
        captioned: dict[str, dict] = {}
        if todo:
            ds = dataset_from_table(pa.Table.from_pylist(todo), 1, config.num_actors).map_batches(
                CaptionActor, fn_constructor_kwargs={"coca": config.coca.model_dump(),
                                                     "caption": config.caption.model_dump(),
                                                     "sampling": config.sampling.model_dump(),
                                                     "threshold": config.dedupe_threshold,
                                                     "threads": int(config.cpus_per_actor)},
                batch_size=1, **resources)
            captioned = {r["key"]: r for r in collect(ds).to_pylist()}
        ok = {k: r for k, r in captioned.items() if not r["reason"]}
        summaries = summarise({k: r["kept"] for k, r in ok.items()}, config.summary_engine, config.summary_params,
                              config.summary_prompts, config.max_attempts) if ok else {}
        done = {k: o.value for k, o in summaries.items() if o.ok}
        embeddings: dict[str, list[float]] = {}
        if done:
            ds = dataset_from_table(pa.table({"key": list(done), "summary": list(done.values())}), 32,
                                    config.num_actors).map_batches(
                CocaTextActor, fn_constructor_kwargs={"coca": config.coca.model_dump(),
                                                      "threads": int(config.cpus_per_actor)},
                batch_size=32, **resources)
            embeddings = {r["key"]: r["embedding"] for r in collect(ds).to_pylist()}
        seconds = time.perf_counter() - t0
        for s in wave:
            rows, rejects = [], []
            items = by_shard[s]
            for v in items:
                r = captioned.get(v["key"])
                if r is None or r["reason"]:
                    rejects.append({"record_id": v["key"], "stage": "caption",
                                    "reason": r["reason"] if r else "missing_result",
                                    "detail": (r or {}).get("detail") or "", "input": json.dumps(v)})
                    continue
                o = summaries[v["key"]]
                if not o.ok:
                    rejects.append({"record_id": v["key"], "stage": "summary", "reason": o.parsed.reason,
                                    "detail": o.parsed.detail,
                                    "input": json.dumps({"kept_captions": r["kept"], "raw_output": o.raw,
                                                         "attempts": o.attempts})[:8000]})
                    continue
                rows.append({"video_uid": v["key"], "frame_times": r["times"], "frame_captions": r["captions"],
                             "kept_captions": r["kept"], "summary": o.value, "image_embedding": r["image"],
                             "summary_embedding": embeddings[v["key"]], "caption_model": caption_model,
                             "summary_model": config.summary_engine.model,
                             "prompt_version": config.summary_prompts.version})
            n = len(items)
            n_captioned = sum(1 for v in items if v["key"] in ok)
            ledger.commit(s, {"captions": pa.Table.from_pylist(rows, schema=CAPTIONS),
                              "rejects": pa.Table.from_pylist(rejects, schema=REJECTS)},
                          {"caption": {"in": n, "out": n_captioned, "rejected": n - n_captioned},
                           "summary": {"in": n_captioned, "out": len(rows), "rejected": n_captioned - len(rows)}},
                          {"seconds": seconds * n / max(1, len(todo)),
                           "frames": sum(len(captioned[v["key"]]["captions"]) for v in items if v["key"] in ok)})
    manifest = finish(config, ledger, shard_ids, done_before, wall0, ["captions", "rejects"],
                      {"caption_model": caption_model})
    manifest.write()
    return manifest.to_dict()
