"""``narrate`` job (LaViLa narrator inference): n sampled captions per video window, with scores.

``backend: vlm`` narrates from frames with a BLIP-2-family model instead (VideoBLIP / EILEV,
:mod:`egoray.pipelines.narrate_vlm`); the output is the same.

Windows come from a table (``video_uid, t_start, t_end[, window_id]`` — ground-truth clips,
``clips.parquet``, or an ingest output's narrations) or, with ``windows.mode: dense``, from fixed
windows tiling every video of the ``video_features`` output. Each window's video tokens are
sampled from the precomputed features on the driver (vectorised, per shard), and a Ray Data
actor pool runs the trained narrator: batched top-p sampling with a KV cache. Output::

    OUTPUT/captions/part-<shard>.parquet   caption_id (<window_id>#<k>), window_id, video_uid, t_start,
                                           t_end, k, text, nll
    OUTPUT/rejects/part-<shard>.parquet    windows whose video has no features
    OUTPUT/total.pkl                       LaViLa's format: [(video_uid, start, end, [texts], [nlls])]
    OUTPUT/run.json
"""

from __future__ import annotations

import io
import pickle
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import JobConfig, StrictModel, Url
from egoray.data.raw import InputError
from egoray.data.schema import REJECTS
from egoray.llm.retry import collect
from egoray.models.vlm import VLMOptions
from egoray.runtime import ShardLedger, assign_shards, dataset_from_table, ensure_ray, finish, waves
from egoray.train.bank import FeatureBank, load_bank

CAPTIONS = pa.schema([("caption_id", pa.string()), ("window_id", pa.string()), ("video_uid", pa.string()),
                      ("t_start", pa.float64()),
                      ("t_end", pa.float64()), ("k", pa.int32()), ("text", pa.string()), ("nll", pa.float64())])


class Windows(StrictModel):
    mode: Literal["table", "dense"] = "table"
    length: float = Field(4.0, gt=0, description="dense: window length in seconds")
    stride: float = Field(4.0, gt=0, description="dense: step between window starts")
    offset_sec: float = Field(0.0, ge=0, description="table: widen each window by this on both sides")


class Sampling(StrictModel):
    n: int = Field(5, ge=1, description="captions per window")
    top_p: float = Field(0.95, gt=0, le=1)
    temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = Field(20, ge=1)
    do_sample: bool = True
    use_cache: bool = True
    seed: int = 0


class Config(JobConfig):
    """Config of the ``narrate`` job (``input``: a window table, or the video_features output when dense)."""

    job: Literal["narrate"] = "narrate"
    backend: Literal["narrator", "vlm"] = Field(
        "narrator", description="narrator: our trained narrator over video features; vlm: a BLIP-2-family model on frames")
    model: Url | None = Field(None, description="a train_narrator output (backend narrator)")
    vlm: VLMOptions = VLMOptions()
    videos: Url | None = Field(None, description="vlm with a clip table: folder holding <video_uid>.<ext>")
    reencode_vfr: bool = Field(False, description="vlm: re-encode variable-frame-rate videos to constant rate")
    vfr_tolerance: float = Field(0.1, gt=0, description="vlm: allowed frame-interval deviation from the median")
    video_features: Url | None = Field(None, description="default: input (dense mode)")
    windows: Windows = Windows()
    video_splits: Url | None = Field(None, description="a splits.json: narrate only videos of `splits`")
    splits: list[str] = ["val", "test"]
    sampling: Sampling = Sampling()
    batch_size: int = Field(32, ge=1, description="windows per generate call")
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    num_shards: int = Field(8, ge=1, le=4096)
    shards_per_wave: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _backend_inputs(self) -> Config:
        if self.backend == "narrator" and not self.model:
            raise ValueError("backend narrator needs model (a train_narrator output)")
        if self.backend == "vlm" and self.windows.mode == "dense" and self.video_features:
            raise ValueError("backend vlm reads frames: dense windows tile the videos of `input`, not video_features")
        return self


def list_windows(config: Config, bank: FeatureBank) -> list[dict[str, Any]]:
    """Rows ``window_id, video_uid, t_start, t_end`` to narrate (of the chosen splits' videos)."""
    rows = _all_windows(config, bank)
    if config.video_splits:
        from egoray.data.splits import read_splits

        by_video = read_splits(config.video_splits)
        rows = [r for r in rows if by_video.get(r["video_uid"]) in config.splits]
    return rows


def _all_windows(config: Config, bank: FeatureBank) -> list[dict[str, Any]]:
    if config.windows.mode == "dense":
        rows = []
        for i, key in enumerate(bank.keys):
            t0 = float(bank.t0[i])
            end = t0 + float(bank.length[i]) / float(bank.fps[i])
            starts = np.arange(t0, max(t0 + 1e-9, end - config.windows.length + 1e-9), config.windows.stride)
            for s in starts:
                e = min(float(s) + config.windows.length, end)
                rows.append({"window_id": f"{key}_{s:.3f}_{e:.3f}", "video_uid": key, "t_start": float(s),
                             "t_end": e})
        return rows
    source = config.input
    if storage.exists(storage.join(source, "narrations")):
        source = storage.join(source, "narrations")
    try:
        table = storage.read_parquet(source)
    except storage.StorageError as e:
        raise InputError(f"cannot read windows: {e}") from None
    missing = {"video_uid", "t_start", "t_end"} - set(table.column_names)
    if missing:
        raise InputError(f"{source}: a window table needs video_uid, t_start, t_end (missing {sorted(missing)})")
    id_col = next((c for c in ("window_id", "clip_id", "narration_id") if c in table.column_names), None)
    off = config.windows.offset_sec
    rows = []
    for r in table.select([c for c in (id_col, "video_uid", "t_start", "t_end") if c]).to_pylist():
        t0, t1 = float(r["t_start"]) - off, float(r["t_end"]) + off
        wid = str(r[id_col]) if id_col else f"{r['video_uid']}_{t0:.3f}_{t1:.3f}"
        rows.append({"window_id": wid, "video_uid": r["video_uid"], "t_start": t0, "t_end": t1})
    ids = [r["window_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{source}: window ids are not unique")
    return rows


def _frames_table(items: list[dict], bank: FeatureBank, num_frames: int) -> tuple[pa.Table, list[dict]]:
    """Windows with their sampled features (``.npy`` bytes), and rejects for videos without features."""
    rows = bank.index_of([i["video_uid"] for i in items])
    ok = [i for i, r in zip(items, rows, strict=True) if r >= 0]
    rejects = [{"record_id": i["window_id"], "stage": "narrate", "reason": "no_video_features",
                "detail": f"video {i['video_uid']}", "input": ""} for i, r in zip(items, rows, strict=True) if r < 0]
    if not ok:
        return pa.table({}), rejects
    r = rows[rows >= 0]
    frames = bank.sample(r, np.array([i["t_start"] for i in ok]), np.array([i["t_end"] for i in ok]), num_frames)
    blobs = []
    for f in frames:
        buf = io.BytesIO()
        np.save(buf, f)
        blobs.append(buf.getvalue())
    return pa.table({"window_id": [i["window_id"] for i in ok], "frames": pa.array(blobs, pa.binary())}), rejects


class NarrateActor:
    """Holds one narrator; turns a batch of windows into n captions each."""

    def __init__(self, model: str, sampling: dict, threads: int, gpu: bool) -> None:
        import torch

        from egoray.train.narrator import load_narrator

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.model = load_narrator(model).to(self.device)
        self.sampling = Sampling(**sampling)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        frames = np.stack([np.load(io.BytesIO(b)) for b in batch["frames"].to_pylist()])
        s = self.sampling
        seed = s.seed + int(np.frombuffer(batch["window_id"][0].as_py().encode()[:4].ljust(4, b"\0"), np.uint32)[0])
        texts, nlls = self.model.generate(torch.from_numpy(frames).float().to(self.device), n=s.n,
                                          max_new_tokens=s.max_new_tokens, top_p=s.top_p,
                                          temperature=s.temperature, do_sample=s.do_sample,
                                          use_cache=s.use_cache, seed=seed)
        return pa.table({"window_id": batch["window_id"],
                         "texts": pa.array(texts, pa.list_(pa.string())),
                         "nlls": pa.array(nlls, pa.list_(pa.float64()))})


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    from egoray.train.narrator import NarratorConfig
    from egoray.train.distributed import load_exported

    if config.backend == "vlm":
        from egoray.pipelines.narrate_vlm import run_vlm

        return run_vlm(config, overwrite)
    wall0 = time.perf_counter()
    blob = load_exported(config.model)
    if blob.get("kind") != "narrator":
        raise InputError(f"{config.model}: holds a {blob.get('kind')!r} model, not a narrator")
    num_frames = NarratorConfig(**blob["config"]).num_frames
    bank = load_bank(config.video_features or config.input)
    items = list_windows(config, bank)
    if not items:
        raise InputError(f"{config.input}: no windows to narrate")
    shard_ids, by_shard = assign_shards(items, "video_uid", config.num_shards)
    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, items=[i["window_id"] for i in items])
    done_before = ledger.completed()
    ensure_ray(config.ray)
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        todo = [i for s in wave for i in by_shard[s]]
        print(f"[narrate] wave {w}/{len(plan)}: {len(todo)} windows", flush=True)
        t0 = time.perf_counter()
        table, rejects = _frames_table(todo, bank, num_frames)
        results: dict[str, dict] = {}
        if table.num_rows:
            ds = dataset_from_table(table, config.batch_size, config.num_actors).map_batches(
                NarrateActor, fn_constructor_kwargs={"model": config.model, "sampling": config.sampling.model_dump(),
                                                     "threads": int(config.cpus_per_actor),
                                                     "gpu": config.gpus_per_actor > 0},
                batch_size=config.batch_size, batch_format="pyarrow", concurrency=config.num_actors,
                num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None)
            results = {r["window_id"]: r for r in collect(ds).to_pylist()}
        commit_wave(ledger, wave, by_shard, results, rejects, time.perf_counter() - t0, len(todo))
    manifest = finish(config, ledger, shard_ids, done_before, wall0, ["captions", "rejects"],
                      {"model": config.model, "total_pkl": storage.join(config.output, "total.pkl")})
    if manifest.status == "complete":
        write_total_pkl(config.output)
    manifest.write()
    return manifest.to_dict()


def commit_wave(ledger: ShardLedger, wave: list[str], by_shard: dict[str, list], results: dict[str, dict],
                rejects: list[dict], seconds: float, n_todo: int) -> None:
    """Commit each shard of a wave: a window's captions (``results[window_id]``: texts, nlls), or
    its reject (its own reason, else ``missing_result``)."""
    rejected = {r["record_id"]: r for r in rejects}
    for s in wave:
        rows, bad = [], []
        for item in by_shard[s]:
            r = results.get(item["window_id"])
            if r is None:
                bad.append(rejected.get(item["window_id"]) or {"record_id": item["window_id"], "stage": "narrate",
                                                               "reason": "missing_result", "detail": "", "input": ""})
                continue
            for k, (text, nll) in enumerate(zip(r["texts"], r["nlls"], strict=True)):
                rows.append({"caption_id": f"{item['window_id']}#{k}", "window_id": item["window_id"],
                             "video_uid": item["video_uid"], "t_start": item["t_start"], "t_end": item["t_end"],
                             "k": k, "text": text, "nll": nll})
        n = len(by_shard[s])
        ledger.commit(s, {"captions": pa.Table.from_pylist(rows, schema=CAPTIONS),
                          "rejects": pa.Table.from_pylist(bad, schema=REJECTS)},
                      {"narrate": {"in": n, "out": n - len(bad), "rejected": len(bad)}},
                      {"seconds": seconds * n / max(1, n_todo), "captions": len(rows)})


def write_total_pkl(output: str) -> int:
    """LaViLa's ``total.pkl``: one quintuple per window, in video then time order."""
    table = storage.read_parquet(storage.join(output, "captions"))
    windows: dict[str, tuple] = {}
    for r in table.sort_by([("video_uid", "ascending"), ("t_start", "ascending"), ("window_id", "ascending"),
                            ("k", "ascending")]).to_pylist():
        entry = windows.setdefault(r["window_id"], (r["video_uid"], r["t_start"], r["t_end"], [], []))
        entry[3].append(r["text"])
        entry[4].append(r["nll"])
    storage.write_bytes(storage.join(output, "total.pkl"), pickle.dumps(list(windows.values()), protocol=4))
    return len(windows)
