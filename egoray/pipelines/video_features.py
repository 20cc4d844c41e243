"""``video_features`` job: per-time-step open_clip image features of videos or clip windows.

Input: a folder/URL of videos (mp4, webm, mkv, avi, mov, gif — whatever PyAV reads; the video
uid is the file stem) or a Parquet table of ``video_uid, path[, t_start, t_end][, clip_id]``
(relative paths are resolved against the table's folder). Frames are decoded in-process with
PyAV, streamed, sampled at ``sampling.fps`` per second or ``sampling.num_frames`` per window,
and encoded in batches by an actor pool. Output::

    OUTPUT/features/part-<shard>.h5        one dataset per key [T, D], attrs fps, model, t_start, t_end
    OUTPUT/index/part-<shard>.parquet      key, video_uid, file, n, dim, fps, model, t_start, t_end
    OUTPUT/clip_mean/part-<shard>.parquet  key, embedding (frame mean), with sampling.clip_mean
    OUTPUT/rejects/part-<shard>.parquet    corrupt, empty, unreadable videos with the reason
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import JobConfig, StrictModel
from egoray.data.raw import InputError
from egoray.data.schema import REJECTS
from egoray.llm.retry import collect
from egoray.models.clip import ClipModel
from egoray.runtime import ShardLedger, assign_shards, dataset_from_table, ensure_ray, finish, waves

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v")


class Sampling(StrictModel):
    fps: float | None = Field(1.875, gt=0, description="samples per second (Ego4D features: 30/16)")
    num_frames: int | None = Field(None, ge=1, description="instead: this many uniform frames per window")
    clip_mean: bool = Field(False, description="also store the mean feature of each window")

    @model_validator(mode="after")
    def _one(self) -> Sampling:
        if self.num_frames is not None:
            self.__dict__["fps"] = None
        if self.fps is None and self.num_frames is None:
            raise ValueError("set fps or num_frames")
        return self


class Config(JobConfig):
    """Config of the ``video_features`` job."""

    job: Literal["video_features"] = "video_features"
    format: Literal["auto", "folder", "table"] = "auto"
    sampling: Sampling = Sampling()
    encoder: ClipModel = ClipModel()
    normalize: bool = False
    dtype: Literal["float32", "float16"] = "float32"
    encode_batch: int = Field(32, ge=1, description="frames per encoder call")
    batch_size: int = Field(1, ge=1, description="videos per actor call")
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    num_shards: int = Field(8, ge=1, le=4096)
    shards_per_wave: int = Field(8, ge=1)


def list_videos(url: str, fmt: str = "auto") -> list[dict[str, Any]]:
    """Rows ``key, video_uid, path, t_start, t_end`` (times None = whole video)."""
    if fmt == "table" or (fmt == "auto" and url.endswith(".parquet")):
        try:
            table = storage.read_parquet(url)
        except storage.StorageError as e:
            raise InputError(f"cannot read video table: {e}") from None
        if not {"video_uid", "path"} <= set(table.column_names):
            raise InputError(f"{url}: needs columns video_uid and path; found {table.column_names}")
        base = url.rsplit("/", 1)[0]
        rows = []
        for r in table.to_pylist():
            path = r["path"] if ("://" in r["path"] or r["path"].startswith("/")) else storage.join(base, r["path"])
            t0, t1 = r.get("t_start"), r.get("t_end")
            key = r.get("clip_id") or (r["video_uid"] if t0 is None else f"{r['video_uid']}_{t0:.3f}_{t1:.3f}")
            rows.append({"key": key, "video_uid": r["video_uid"], "path": path, "t_start": t0, "t_end": t1})
        return rows
    files = [u for u in _list_files(url) if u.lower().endswith(VIDEO_EXTENSIONS)]
    if not files:
        raise InputError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under {url}")
    return [{"key": PurePosixPath(f).stem, "video_uid": PurePosixPath(f).stem, "path": f, "t_start": None,
             "t_end": None} for f in files]


def _list_files(url: str) -> list[str]:
    if not storage.exists(url):
        raise InputError(f"input not found: {url}")
    out = storage.listdir(url)
    videos = storage.join(url, "videos")
    if not any(u.lower().endswith(VIDEO_EXTENSIONS) for u in out) and storage.exists(videos):
        out = storage.listdir(videos)  # a synthetic dataset folder
    return out


def extract(path: str, t_start: float | None, t_end: float | None, sampling: Sampling, encoder: Any,
            size: int, batch: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(features [T, D], sample times, window start, window end) of one video or window."""
    from egoray.video.decode import VideoError, iter_frames, probe, sample_times

    info = probe(path)
    start = 0.0 if t_start is None else float(t_start)
    end = info.duration if t_end is None else float(t_end)
    if info.duration <= 0 and t_end is None:
        raise VideoError("empty", "zero-length video")
    if end < start:
        raise VideoError("bad_window", f"t_end {end} before t_start {start}")
    times = sample_times(start, end, rate=sampling.fps, num_frames=sampling.num_frames)
    frames = (f for _, f in iter_frames(path, times, size))
    feats = encoder.encode_stream(frames, batch)
    return feats, times, start, end


class VideoEncodeActor:
    """Decodes and encodes whole videos; returns features as .npy bytes (variable length)."""

    def __init__(self, encoder: dict, sampling: dict, encode_batch: int, normalize: bool, threads: int) -> None:
        import torch

        from egoray.features.vision import ImageEncoder

        torch.set_num_threads(max(1, threads))
        self.encoder = ImageEncoder(ClipModel(**encoder))
        self.sampling = Sampling(**sampling)
        self.batch = encode_batch
        self.normalize = normalize

    def __call__(self, batch: pa.Table) -> pa.Table:
        from egoray.video.decode import VideoError

        out: dict[str, list] = {"key": [], "npy": [], "times": [], "t_start": [], "t_end": [], "reason": [],
                                "detail": []}
        for row in batch.to_pylist():
            out["key"].append(row["key"])
            try:
                with storage.local_copy(row["path"]) as local:
                    feats, times, start, end = extract(local, row["t_start"], row["t_end"], self.sampling,
                                                       self, self.encoder.size, self.batch)
                buf = io.BytesIO()
                np.save(buf, feats)
                out["npy"].append(buf.getvalue())
                out["times"].append(times.tolist())
                out["t_start"].append(start)
                out["t_end"].append(end)
                out["reason"].append(None)
                out["detail"].append(None)
            except (VideoError, storage.StorageError) as e:
                out["npy"].append(None)
                out["times"].append(None)
                out["t_start"].append(row["t_start"])
                out["t_end"].append(row["t_end"])
                out["reason"].append(getattr(e, "reason", "unreadable"))
                out["detail"].append(getattr(e, "detail", str(e))[:500])
        return pa.table({"key": pa.array(out["key"], pa.string()), "npy": pa.array(out["npy"], pa.binary()),
                         "times": pa.array(out["times"], pa.list_(pa.float64())),
                         "t_start": pa.array(out["t_start"], pa.float64()),
                         "t_end": pa.array(out["t_end"], pa.float64()),
                         "reason": pa.array(out["reason"], pa.string()),
                         "detail": pa.array(out["detail"], pa.string())})

    def encode_stream(self, frames, batch):
        return self.encoder.encode_stream(frames, batch, self.normalize)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:

    wall0 = time.perf_counter()
    videos = list_videos(config.input, config.format)
    keys = [v["key"] for v in videos]
    if len(set(keys)) != len(keys):
        raise InputError(f"{config.input}: video keys are not unique (give clip_id for repeated windows)")
    shard_ids, by_shard = assign_shards(videos, "key", config.num_shards)
    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, items=[f"{v['key']}\t{v['path']}" for v in videos])
    done_before = ledger.completed()
    ensure_ray(config.ray)
    model = f"{config.encoder.name}:{config.encoder.pretrained or 'random'}"
    fps = config.sampling.fps
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        todo = [v for s in wave for v in by_shard[s]]
        print(f"[video_features] wave {w}/{len(plan)}: {len(todo)} videos", flush=True)
        t0 = time.perf_counter()
        results = {}
        if todo:
            ds = dataset_from_table(pa.Table.from_pylist(todo), config.batch_size, config.num_actors).map_batches(
                VideoEncodeActor,
                fn_constructor_kwargs={"encoder": config.encoder.model_dump(),
                                       "sampling": config.sampling.model_dump(),
                                       "encode_batch": config.encode_batch, "normalize": config.normalize,
                                       "threads": int(config.cpus_per_actor)},
                batch_size=config.batch_size, batch_format="pyarrow", concurrency=config.num_actors,
                num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None)
            results = {r["key"]: r for r in collect(ds).to_pylist()}
        seconds = time.perf_counter() - t0
        for s in wave:
            _commit(config, ledger, s, by_shard[s], results, model, fps,
                    seconds * len(by_shard[s]) / max(1, len(todo)))
    tables = ["index", "rejects"] + (["clip_mean"] if config.sampling.clip_mean else [])
    manifest = finish(config, ledger, shard_ids, done_before, wall0, tables, {"model": model})
    manifest.write()
    return manifest.to_dict()


def _commit(config: Config, ledger: ShardLedger, shard: str, items: list[dict], results: dict, model: str,
            fps: float | None, seconds: float) -> None:
    arrays, attrs, index, means, rejects = {}, {}, [], [], []
    file = f"features/part-{shard}.h5"
    for item in items:
        r = results.get(item["key"])
        if r is None or r["reason"]:
            reason = r["reason"] if r else "missing_result"
            rejects.append({"record_id": item["key"], "stage": "decode", "reason": reason,
                            "detail": (r or {}).get("detail") or "", "input": json.dumps(item)})
            continue
        feats = np.load(io.BytesIO(r["npy"])).astype(config.dtype)
        arrays[item["key"]] = feats
        attrs[item["key"]] = {"fps": fps if fps else float("nan"), "model": model, "t_start": r["t_start"],
                              "t_end": r["t_end"]}
        index.append({"key": item["key"], "video_uid": item["video_uid"], "file": file, "n": int(feats.shape[0]),
                      "dim": int(feats.shape[1]), "fps": fps, "model": model, "t_start": r["t_start"],
                      "t_end": r["t_end"]})
        if config.sampling.clip_mean:
            means.append({"key": item["key"], "embedding": feats.astype(np.float32).mean(0).tolist()})
    if arrays:
        storage.write_hdf5_shard(storage.join(config.output, file), arrays, attrs)
    index_schema = pa.schema([("key", pa.string()), ("video_uid", pa.string()), ("file", pa.string()),
                              ("n", pa.int64()), ("dim", pa.int64()), ("fps", pa.float64()), ("model", pa.string()),
                              ("t_start", pa.float64()), ("t_end", pa.float64())])
    tables = {"index": pa.Table.from_pylist(index, schema=index_schema),
              "rejects": pa.Table.from_pylist(rejects, schema=REJECTS)}
    if config.sampling.clip_mean:
        tables["clip_mean"] = pa.Table.from_pylist(
            means, schema=pa.schema([("key", pa.string()), ("embedding", pa.list_(pa.float32()))]))
    n = len(items)
    ledger.commit(shard, tables, {"decode_encode": {"in": n, "out": len(index), "rejected": len(rejects)}},
                  {"seconds": seconds, "frames": int(sum(i["n"] for i in index))})


def read_features(output: str, key: str) -> np.ndarray:
    """The [T, D] features of one key from a video_features output (via its index)."""
    index = storage.read_parquet(storage.join(output, "index"))
    import pyarrow.compute as pc

    hit = index.filter(pc.equal(index["key"], key))
    if hit.num_rows == 0:
        raise KeyError(key)
    return storage.read_hdf5_shard(storage.join(output, hit["file"][0].as_py()), [key])[key]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
