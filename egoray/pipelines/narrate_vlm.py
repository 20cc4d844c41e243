"""``narrate`` with ``backend: vlm``: BLIP-2-family narration from frames (VideoBLIP / EILEV).

``input`` is a folder of videos (one window per video, or dense windows with ``windows.mode:
dense``) or a clip table (``video_uid, t_start, t_end`` and a ``path`` column or ``videos:``, a
folder holding ``<video_uid>.<ext>``). Every video is checked on the driver first: unreadable
ones and variable-frame-rate ones are rejected with a reason, or with ``reencode_vfr`` the latter
are re-encoded to constant rate (``OUTPUT/cfr/``) and narrated from the copy. A Ray Data actor
pool (one GPU per actor in real configs) decodes N uniform frames per clip and per in-context
example, and generates. Output: as the narrator backend (``captions/``, ``rejects/``,
``total.pkl``, ``run.json``).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.text import normalise_one
from egoray.llm.retry import collect
from egoray.models.vlm import VLMOptions, choose_examples
from egoray.pipelines.narrate import Config, commit_wave, write_total_pkl
from egoray.pipelines.video_features import VIDEO_EXTENSIONS, list_videos
from egoray.runtime import ShardLedger, assign_shards, dataset_from_table, ensure_ray, finish, waves
from egoray.video.decode import VideoError


def _is_table(url: str) -> bool:
    return url.endswith(".parquet") or storage.exists(storage.join(url, "narrations"))


def _video_paths(folder: str) -> dict[str, str]:
    return {PurePosixPath(u).stem: u for u in storage.listdir(folder) if u.lower().endswith(VIDEO_EXTENSIONS)}


def _read_table(url: str) -> pa.Table:
    source = storage.join(url, "narrations") if storage.exists(storage.join(url, "narrations")) else url
    try:
        return storage.read_parquet(source)
    except storage.StorageError as e:
        raise InputError(f"cannot read clips: {e}") from None


def _with_paths(rows: list[dict], videos: str | None, what: str) -> list[dict]:
    """Each row's video file: its ``path`` (relative ones from the table's folder), or
    ``<videos>/<video_uid>.<ext>``."""
    if rows and rows[0].get("path"):
        base = what.rsplit("/", 1)[0] if what.endswith(".parquet") else what
        return [{**r, "path": r["path"] if ("://" in r["path"] or r["path"].startswith("/"))
                 else storage.join(base, r["path"])} for r in rows]
    if not videos:
        raise InputError(f"{what}: has no path column; set `videos` to the folder holding <video_uid>.<ext>")
    paths = _video_paths(videos)
    return [{**r, "path": paths.get(r["video_uid"])} for r in rows]


def list_clips(config: Config) -> list[dict[str, Any]]:
    """Windows ``window_id, video_uid, path, t_start, t_end[, verb, noun]`` (path None: no such video).

    Folder input: whole videos (``t_end`` None until probed) or dense tiles; table input: its rows.
    """
    if _is_table(config.input):
        table = _read_table(config.input)
        missing = {"video_uid", "t_start", "t_end"} - set(table.column_names)
        if missing:
            raise InputError(f"{config.input}: a clip table needs video_uid, t_start, t_end (missing {sorted(missing)})")
        id_col = next((c for c in ("window_id", "clip_id", "narration_id") if c in table.column_names), None)
        off = config.windows.offset_sec
        rows = []
        for r in table.to_pylist():
            t0, t1 = float(r["t_start"]) - off, float(r["t_end"]) + off
            rows.append({"window_id": str(r[id_col]) if id_col else f"{r['video_uid']}_{t0:.3f}_{t1:.3f}",
                         "video_uid": r["video_uid"], "t_start": max(0.0, t0), "t_end": t1,
                         "verb": r.get("verb"), "noun": r.get("noun"), "path": r.get("path")})
        rows = _with_paths(rows, config.videos, config.input)
    else:
        rows = [{"window_id": v["video_uid"], "video_uid": v["video_uid"], "t_start": 0.0, "t_end": None,
                 "verb": None, "noun": None, "path": v["path"]} for v in list_videos(config.input)]
    if config.video_splits:
        from egoray.data.splits import read_splits

        by_video = read_splits(config.video_splits)
        rows = [r for r in rows if by_video.get(r["video_uid"]) in config.splits]
    ids = [r["window_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{config.input}: window ids are not unique")
    return rows


def check_videos(paths: list[str], config: Config) -> tuple[dict[str, str], dict[str, tuple[str, str, float]]]:
    """Usable path (the file, or its constant-rate copy) and duration of each video, or a reject
    reason: ``{path: (usable path, "", duration)}`` and ``{path: (reason, detail, 0)}``."""
    from egoray.video.decode import probe
    from egoray.video.frame_rate import frame_timing, reencode_cfr

    usable: dict[str, str] = {}
    info: dict[str, tuple[str, str, float]] = {}
    for path in sorted(set(paths)):
        try:
            with storage.local_copy(path) as local:
                duration = probe(local).duration
                timing = frame_timing(local, tolerance=config.vfr_tolerance)
                if timing.variable and config.reencode_vfr:
                    import os
                    import tempfile

                    with tempfile.TemporaryDirectory() as tmp:
                        out = os.path.join(tmp, PurePosixPath(path).stem + ".mp4")
                        reencode_cfr(local, out)
                        target = storage.join(config.output, "cfr", PurePosixPath(path).stem + ".mp4")
                        with open(out, "rb") as f:
                            storage.write_bytes(target, f.read())
                    print(f"[narrate] {path}: variable frame rate ({timing.detail}); re-encoded to {target}", flush=True)
                    usable[path] = target
                elif timing.variable:
                    info[path] = ("variable_frame_rate", timing.detail + "; set reencode_vfr to re-encode", 0.0)
                    continue
                else:
                    usable[path] = path
                info[path] = ("", "", duration)
        except VideoError as e:
            info[path] = (e.reason, e.detail, 0.0)
        except storage.StorageError as e:
            info[path] = ("unreadable", str(e)[:300], 0.0)
    return usable, info


def _tile(rows: list[dict], info: dict, config: Config) -> list[dict]:
    """Whole-video rows get their probed end, or are cut into dense windows."""
    out = []
    for r in rows:
        if r["t_end"] is not None or r["path"] not in info or info[r["path"]][0]:
            out.append(r)
            continue
        duration = info[r["path"]][2]
        if config.windows.mode != "dense":
            out.append({**r, "t_end": duration})
            continue
        length, stride = config.windows.length, config.windows.stride
        for s in np.arange(0.0, max(duration - length, 0.0) + 1e-9, stride):
            e = min(duration, s + length)
            out.append({**r, "window_id": f"{r['video_uid']}_{s:.3f}_{e:.3f}", "t_start": float(s), "t_end": float(e)})
    return out


def load_pool(config: Config) -> list[dict[str, Any]]:
    """In-context examples: narrated clips with a readable video, text cleaned (``#C C`` → ...)."""
    ic = config.vlm.in_context
    if ic.k == 0:
        return []
    if not ic.pool:
        raise InputError("vlm.in_context.k > 0 needs vlm.in_context.pool (a table of narrated clips)")
    table = _read_table(ic.pool)
    if ic.pool_splits and "split" in table.column_names:
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table["split"], value_set=pa.array(ic.pool_splits, pa.string())))
    missing = {"video_uid", "t_start", "t_end", "text"} - set(table.column_names)
    if missing:
        raise InputError(f"{ic.pool}: an example pool needs video_uid, t_start, t_end, text (missing {sorted(missing)})")
    rows = []
    for r in table.to_pylist():
        text = normalise_one(r.get("raw_text") or r["text"] or "")
        t0, t1 = float(r["t_start"]), float(r["t_end"])
        if t1 - t0 < 0.5:  # point narrations (Ego4D): a short window around the time
            t0, t1 = max(0.0, t0 - 1.0), t1 + 1.0
        if text:
            rows.append({"video_uid": r["video_uid"], "t_start": t0, "t_end": t1, "text": text,
                         "verb": r.get("verb"), "noun": r.get("noun"), "path": r.get("path")})
    rows = [r for r in _with_paths(rows, config.videos, ic.pool) if r["path"]]
    if len(rows) < ic.k:
        raise InputError(f"{ic.pool}: {len(rows)} usable examples, fewer than k={ic.k}")
    return rows


class VLMNarrateActor:
    """Holds one BLIP-2-family model; narrates a batch of clips with their in-context examples."""

    def __init__(self, options: dict, threads: int, gpu: bool) -> None:
        import torch

        from egoray.models.vlm import load_vlm

        torch.set_num_threads(max(1, threads))
        self.options = VLMOptions(**options)
        device = "cuda" if gpu and torch.cuda.is_available() else "cpu"
        self.vlm = load_vlm(self.options.model, device, self.options.dtype)
        self.size = int(self.vlm.image_processor.size["height"])
        self.cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def _frames(self, path: str, t0: float, t1: float) -> np.ndarray:
        """The clip's frames, from a small LRU cache: the same examples serve many queries."""
        from egoray.video.decode import iter_frames, sample_times

        key = (path, t0, t1)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        times = sample_times(t0, max(t1, t0 + 1e-3), num_frames=self.options.num_frames)
        with storage.local_copy(path) as local:
            frames = np.stack([f for _, f in iter_frames(local, times, self.size)])
        if self.options.frame_cache:
            self.cache[key] = frames
            while len(self.cache) > self.options.frame_cache:
                self.cache.popitem(last=False)
        return frames

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from egoray.models.vlm import clip_prompts, embed_prompt, generate, pixel_values, prompt_segments

        o = self.options
        rows = batch.to_pylist()
        clips: dict[tuple, np.ndarray] = {}
        errors: dict[str, tuple[str, str]] = {}
        for r in rows:
            needed = [(r["path"], r["t_start"], r["t_end"])] + [
                (e["path"], e["t_start"], e["t_end"]) for e in json.loads(r["examples"])]
            for key in needed:
                if key in clips:
                    continue
                try:
                    clips[key] = self._frames(*key)
                except (VideoError, storage.StorageError) as e:
                    errors[r["window_id"]] = (getattr(e, "reason", "unreadable"), str(e)[:300])
        keys = list(clips)
        with torch.no_grad():
            visual = clip_prompts(self.vlm.model, pixel_values(self.vlm, [clips[k] for k in keys])) if keys else None
        index = {k: i for i, k in enumerate(keys)}
        prompts, ok = [], []
        for r in rows:
            if r["window_id"] in errors:
                continue
            examples = json.loads(r["examples"])
            segments = prompt_segments(o.question, o.answer_prefix, [e["text"] for e in examples])
            ex = [visual[index[(e["path"], e["t_start"], e["t_end"])]] for e in examples]
            ex_t = torch.stack(ex) if ex else visual[:0]
            prompts.append(embed_prompt(self.vlm, segments, ex_t, visual[index[(r["path"], r["t_start"], r["t_end"])]]))
            ok.append(r["window_id"])
        texts, nlls = ([], [])
        if prompts:
            seed = o.seed + int(np.frombuffer(ok[0].encode()[:4].ljust(4, b"\0"), np.uint32)[0])
            texts, nlls = generate(self.vlm, o, prompts, seed)
        result = {w: ([normalise_one(t) for t in ts], ns) for w, ts, ns in zip(ok, texts, nlls, strict=True)}
        out = {"window_id": [], "texts": [], "nlls": [], "reason": [], "detail": []}
        for r in rows:
            w = r["window_id"]
            ts, ns = result.get(w, ([], []))
            reason, detail = errors.get(w, ("", ""))
            for key, value in (("window_id", w), ("texts", ts), ("nlls", ns), ("reason", reason), ("detail", detail)):
                out[key].append(value)
        return pa.table({"window_id": out["window_id"], "texts": pa.array(out["texts"], pa.list_(pa.string())),
                         "nlls": pa.array(out["nlls"], pa.list_(pa.float64())), "reason": out["reason"],
                         "detail": out["detail"]})


def run_vlm(config: Config, overwrite: bool = False) -> dict[str, Any]:
    wall0 = time.perf_counter()
    clips = list_clips(config)
    if not clips:
        raise InputError(f"{config.input}: no clips to narrate")
    pool = load_pool(config)
    ic = config.vlm.in_context
    rng = np.random.default_rng(ic.seed)
    for c in clips:  # examples are fixed per clip before sharding, so a resumed run picks the same
        chosen = choose_examples(c, pool, ic.k, ic.strategy, ic.verb_noun_ratio, rng)
        c["examples"] = [{k: pool[i][k] for k in ("path", "t_start", "t_end", "text")} for i in chosen]
    shard_ids, by_shard = assign_shards(clips, "video_uid", config.num_shards)
    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, items=[c["window_id"] for c in clips])
    done_before = ledger.completed()
    todo_all = [c for s in shard_ids if s not in done_before for c in by_shard[s]]
    paths = [c["path"] for c in todo_all if c["path"]] + [e["path"] for c in todo_all for e in c["examples"]]
    usable, info = check_videos(paths, config)
    chosen = [e["path"] for c in todo_all for e in c["examples"]]
    dropped = sum(1 for p in chosen if p not in usable)
    if chosen and dropped == len(chosen):
        raise InputError(f"none of the in-context examples' videos is usable (first: {info[chosen[0]][1]})")
    if dropped:
        print(f"[narrate] {dropped} of {len(chosen)} chosen in-context examples have an unusable video; "
              "their clips get fewer examples", flush=True)
    for s in shard_ids:  # whole videos get their duration; dense mode cuts them here
        by_shard[s] = _tile(by_shard[s], info, config)
    ensure_ray(config.ray)
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        todo = [c for s in wave for c in by_shard[s]]
        print(f"[narrate] wave {w}/{len(plan)}: {len(todo)} clips (VLM {config.vlm.model})", flush=True)
        t0 = time.perf_counter()
        rejects, ready = [], []
        for c in todo:
            reason, detail, _ = info.get(c["path"], ("no_video", f"no video file for {c['video_uid']}", 0.0)) \
                if c["path"] else ("no_video", f"no video file for {c['video_uid']}", 0.0)
            if reason:
                rejects.append({"record_id": c["window_id"], "stage": "narrate", "reason": reason, "detail": detail,
                                "input": c["path"] or ""})
                continue
            examples = [{**e, "path": usable[e["path"]]} for e in c["examples"] if e["path"] in usable]
            ready.append({"window_id": c["window_id"], "path": usable[c["path"]], "t_start": c["t_start"],
                          "t_end": c["t_end"], "examples": json.dumps(examples)})
        results: dict[str, dict] = {}
        if ready:
            ds = dataset_from_table(pa.Table.from_pylist(ready), config.batch_size, config.num_actors).map_batches(
                VLMNarrateActor, fn_constructor_kwargs={"options": config.vlm.model_dump(),
                                                        "threads": int(config.cpus_per_actor),
                                                        "gpu": config.gpus_per_actor > 0},
                batch_size=config.batch_size, batch_format="pyarrow", concurrency=config.num_actors,
                num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None)
            for r in collect(ds).to_pylist():
                if r["reason"]:
                    rejects.append({"record_id": r["window_id"], "stage": "narrate", "reason": r["reason"],
                                    "detail": r["detail"], "input": ""})
                else:
                    results[r["window_id"]] = r
        commit_wave(ledger, wave, by_shard, results, rejects, time.perf_counter() - t0, len(todo))
    manifest = finish(config, ledger, shard_ids, done_before, wall0, ["captions", "rejects"],
                      {"model": config.vlm.model, "backend": "vlm", "in_context_k": ic.k,
                       "total_pkl": storage.join(config.output, "total.pkl")})
    if manifest.status == "complete":
        write_total_pkl(config.output)
    manifest.write()
    return manifest.to_dict()
