"""How the streaming data plane scales: driver memory at N and 8N, and throughput against the old
wave executor, on the same input in one run.

    uv run --extra bench python benchmarks/scale.py memory text     # text_features at 25,000 and 200,000 texts
    uv run --extra bench python benchmarks/scale.py memory video    # video_features at 20 and 160 videos
    uv run --extra bench python benchmarks/scale.py memory pairs    # training pairs at 25,000 and 200,000 narrations
    uv run --extra bench python benchmarks/scale.py memory train    # dual encoder training (driver and worker peaks)
    uv run --extra bench python benchmarks/scale.py throughput      # 200,000 texts, 40 videos: ours vs the old executor

**memory**: each size runs as its own driver process (``egoray run``-equivalent, its own local Ray
of 2 CPUs) and reports the driver's peak resident set (``ru_maxrss`` of the driver process only),
and, sampled from this process, the peak of each kind of Ray worker (by process title) and of
all of them together (PSS). The first principle says none of these may grow with the input.
``memory text`` also counts what resume keeps per committed batch and times a resume of the
finished output (every row filtered out by Ray Data's checkpoint): the records' cost.

**throughput**: one local Ray, warmed up on a small input first; then the old executor and ours
on the same input, each writing its full output. The old way is kept here as the reference: the
driver reads every row (``to_pylist``), cuts the work into waves of shards, builds a Ray Dataset
from driver-side tables per wave (a fresh actor pool — and a model load — per wave), collects
every result back into the driver and writes each shard from there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

VERBS = ["picks up", "puts down", "opens", "closes", "cuts", "washes", "stirs", "pours", "holds", "moves"]
NOUNS = ["the cup", "a knife", "the door", "an onion", "the pan", "a bowl", "the tap", "a spoon", "the lid"]


DEFAULT_N = {"text": 25_000, "video": 20, "pairs": 25_000, "train": 25_000}


def _save(name: str, results: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def write_texts(path: Path, n: int, videos: int = 500) -> None:
    """``n`` narration-like rows (id, text, video_uid, times, split) in 8 Parquet files."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    per = math.ceil(n / 8)
    for f in range(8):
        ids = np.arange(f * per, min(n, (f + 1) * per))
        if not len(ids):
            continue
        v = rng.integers(0, videos, len(ids))
        t = rng.uniform(0, 60, len(ids))
        pq.write_table(pa.table({
            "narration_id": [f"n{i:08d}" for i in ids],
            "text": [f"The camera wearer {VERBS[i % 10]} {NOUNS[(i // 10) % 9]} number {i % 997}" for i in ids],
            "video_uid": [f"v{x:05d}" for x in v], "t_start": t, "t_end": t,
            "split": ["train" if x % 5 else "val" for x in v]}), path / f"part-{f}.parquet")


def write_videos(path: Path, n: int) -> None:
    from egoray.data.synth import synthesize

    if not (path / "videos.parquet").exists():
        synthesize(str(path), videos=n, seed=n, actions_per_video=2, with_videos=True)


# ---------------------------------------------------------------------------------------------
# memory at N and 8N
# ---------------------------------------------------------------------------------------------


def drive(argv: list[str]) -> None:
    """Run one egoray command in this process, then print this (driver) process's peak RSS."""
    from egoray.cli import main

    t0 = time.perf_counter()
    code = main(argv)
    print(json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                      "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def drive_pairs(texts: str, features: str, output: str) -> None:
    """Build training pairs (the dual encoder's pass) in this process; print the driver's peak RSS."""
    import ray

    from egoray.runtime import ensure_ray
    from egoray.train.data import text_features_source
    from egoray.train.pairs import build_pairs, count_pairs

    t0 = time.perf_counter()
    ensure_ray()
    items, _ = text_features_source(texts, ["train", "val"])
    url = build_pairs(output, "pairs", items, features, 1.0)
    counts = count_pairs(url)
    ray.shutdown()
    print(json.dumps({"code": 0, "seconds": time.perf_counter() - t0, "pairs": counts["total"],
                      "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


class WorkerMemory:
    """Peak memory of a driver's Ray (its raylet's worker processes are the driver's descendants),
    sampled twice a second from another thread: the largest worker's resident set, by process
    title (Ray names a worker after what it runs: ``ray::MapWorker(...)``, ``ray::ReadParquet``),
    and the peak proportional set size of all the driver's descendants together (PSS counts
    shared pages once, so torch's libraries are not counted per worker)."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        import threading

        self.pid, self.every_s = pid, every_s
        self.by_title: dict[str, float] = {}
        self.total_pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every_s):
            try:
                procs = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            total = 0.0
            for proc in procs:
                try:
                    title = (proc.cmdline() or [""])[0]
                    info = proc.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                total += info.pss / 2**20
                if title.startswith("ray::"):
                    key = title.split(" ")[0].split("(")[0]
                    self.by_title[key] = max(self.by_title.get(key, 0.0), info.rss / 2**20)
            self.total_pss_mb = max(self.total_pss_mb, total)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"worker_peak_mb": max(self.by_title.values(), default=0.0),
                "worker_peak_mb_by_title": dict(sorted(self.by_title.items(), key=lambda kv: -kv[1])[:6]),
                "ray_total_pss_peak_mb": self.total_pss_mb}


def _child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    memory = WorkerMemory(proc.pid)
    stdout, stderr = proc.communicate()
    workers = memory.stop()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{args}: exit {proc.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return {**json.loads(lines[-1]), **workers}


def checkpoint_records(output: Path) -> dict[str, Any]:
    """What resume keeps per committed batch: Ray Data's checkpoint files (the ids of each write
    task) and our per-batch count records."""
    ckpt = [f for f in (output / "_checkpoint").rglob("*") if f.is_file()]
    counts = [f for f in (output / "_counts").rglob("*.json")]
    return {"checkpoint_files": len(ckpt), "checkpoint_mb": sum(f.stat().st_size for f in ckpt) / 2**20,
            "count_records": len(counts), "count_records_mb": sum(f.stat().st_size for f in counts) / 2**20}


def write_features(path: Path, videos: int, seconds: float = 90.0, dim: int = 64) -> None:
    """A video_features output of ``videos`` random-feature videos (1.875 features/s)."""
    from egoray import storage

    if (path / "index").exists():
        return
    rng = np.random.default_rng(videos)
    n = int(seconds * 1.875)
    per_file = 50
    rows = []
    for f in range(math.ceil(videos / per_file)):
        keys = [f"v{i:05d}" for i in range(f * per_file, min(videos, (f + 1) * per_file))]
        file = f"features/part-{f}.h5"
        storage.write_hdf5_shard(str(path / file), {k: rng.normal(size=(n, dim)).astype(np.float32) for k in keys})
        rows += [{"key": k, "video_uid": k, "file": file, "n": n, "dim": dim, "fps": 1.875, "model": "random",
                  "t_start": 0.0, "t_end": seconds} for k in keys]
    storage.write_parquet(str(path / "index" / "part-0.parquet"), pa.Table.from_pylist(rows))


def write_text_features(path: Path, n: int, videos: int, dim: int = 64) -> None:
    """A text_features output of ``n`` narrations (embeddings with the narration columns kept)."""
    if (path / "embeddings").exists():
        return
    src = path.parent / f"texts-{n}"
    write_texts(src, n, videos)
    rng = np.random.default_rng(n + 1)
    (path / "embeddings").mkdir(parents=True)
    for f in sorted(src.glob("*.parquet")):
        t = pq.read_table(f)
        emb = rng.normal(size=(t.num_rows, dim)).astype(np.float32)
        pq.write_table(pa.table({"id": t["narration_id"], "text": t["text"],
                                 "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim)
                                 .cast(pa.list_(pa.float32())),
                                 **{c: t[c] for c in ("video_uid", "t_start", "t_end", "split")}}),
                       path / "embeddings" / f.name)


def bench_memory(kind: str, work: Path, n: int) -> None:
    sizes = (n, 8 * n)
    results: dict[str, Any] = {"kind": kind, "sizes": list(sizes), "runs": []}
    for size in sizes:
        out = work / f"{kind}-out-{size}"
        if kind == "text":
            src = work / f"texts-{size}"
            if not src.exists():
                write_texts(src, size)
            command = ["_drive", "run", str(ROOT / "configs/demo/text_features.yaml"), f"input={src}",
                       f"output={out}", "ray.num_cpus=2"]
            r = _child([*command, "--overwrite"])
            r.update(checkpoint_records(out))
            # the cost of those records on resume: the same output, its manifest removed as a
            # kill leaves it, run again — Ray Data loads every record and filters every row out
            (out / "run.json").unlink()
            again = _child(command)
            r["resume_of_finished"] = {k: again[k] for k in ("seconds", "driver_peak_mb", "worker_peak_mb",
                                                              "ray_total_pss_peak_mb")}
        elif kind == "video":
            src = work / f"videos-{size}"
            write_videos(src, size)
            r = _child(["_drive", "run", str(ROOT / "configs/demo/video_features.yaml"), f"input={src / 'videos'}",
                        f"output={out}", "ray.num_cpus=2", "--overwrite"])
        elif kind == "pairs":
            videos = max(50, size // 100)
            write_features(work / f"features-{size}", videos)
            write_text_features(work / f"tf-{size}", size, videos)
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            r = _child(["_pairs", str(work / f"tf-{size}"), str(work / f"features-{size}"), str(out)])
        else:  # train: the dual encoder end to end, one epoch, 2 Ray Train workers
            videos = max(50, size // 100)
            write_features(work / f"features-{size}", videos)
            write_text_features(work / f"tf-{size}", size, videos)
            r = _child(["_drive", "run", str(ROOT / "configs/demo/train_dual_encoder.yaml"),
                        f"input={work / f'texts-{size}'}", f"output={out}", f"video_features={work / f'features-{size}'}",
                        f"text_features={work / f'tf-{size}'}", "labels=null", "train.epochs=1",
                        "train.batch_size=256", "train.tensorboard=false", "eval_splits=[none]",  # memory of training alone
                        "ray.num_cpus=2", "--overwrite"])
            run = json.loads((out / "run.json").read_text())
            r.update(pairs=run["pairs"]["train"], examples_per_s=run["final_metrics"]["examples_per_s"],
                     worker_peak_mb=run["final_metrics"]["worker_peak_rss_mb"])
        r["size"] = size
        results["runs"].append(r)
        print(json.dumps(r), flush=True)
    a, b = results["runs"]
    results["driver_peak_ratio_8n_over_n"] = b["driver_peak_mb"] / a["driver_peak_mb"]
    results["driver_peak_mb_at_8n"] = b["driver_peak_mb"]
    results["met"] = results["driver_peak_ratio_8n_over_n"] <= 1.25 and b["driver_peak_mb"] < 1024
    results["worker_peak_ratio_8n_over_n"] = b["worker_peak_mb"] / a["worker_peak_mb"]
    if kind == "train":
        results["worker_peak_ratio_8n_over_n"] = b["worker_peak_mb"] / a["worker_peak_mb"]
        results["met"] = results["met"] and results["worker_peak_ratio_8n_over_n"] <= 1.25
    _save(f"scale-{kind}" + ("" if n == DEFAULT_N[kind] else f"-{n // 1000}k"), results)


# ---------------------------------------------------------------------------------------------
# throughput: the old wave executor (the reference) vs ours, on one warm Ray
# ---------------------------------------------------------------------------------------------


def _collect(ds: Any) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def _from_table(table: pa.Table, batch_size: int, workers: int) -> Any:
    import ray

    n = table.num_rows
    blocks = max(1, min(math.ceil(n / max(1, batch_size)), workers * 4))
    step = math.ceil(n / blocks) if n else 1
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, max(n, 1), step)])


def _waves(rows: list[dict], key: str, num_shards: int, per_wave: int) -> list[list[list[dict]]]:
    shards: list[list[dict]] = [[] for _ in range(num_shards)]
    for r in rows:
        shards[zlib.crc32(str(r[key]).encode()) % num_shards].append(r)
    return [shards[i:i + per_wave] for i in range(0, num_shards, per_wave)]


class OldTextActor:
    def __init__(self, encoder: dict, batch_size: int) -> None:
        import torch

        from egoray.features.text import TextEncoder, TextEncoderConfig

        torch.set_num_threads(1)
        self.encoder = TextEncoder(TextEncoderConfig(**encoder))
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        emb = self.encoder.encode([t or "" for t in batch["text"].to_pylist()], self.batch_size)
        flat = pa.array(emb.reshape(-1), type=pa.float32())
        return batch.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]))


def old_text_features(src: Path, out: Path, actors: int = 1, batch: int = 128, num_shards: int = 8,
                      per_wave: int = 8) -> None:
    """The reference: the wave executor as it was (rows in the driver, a pool per wave, collect)."""
    from egoray import storage
    from egoray.features.text import TextEncoderConfig

    rows = storage.read_parquet(str(src), columns=["narration_id", "text"]).rename_columns(["id", "text"]).to_pylist()
    encoder = TextEncoderConfig(model="tiny:sentence", normalize=True).model_dump()
    for w, wave in enumerate(_waves(rows, "id", num_shards, per_wave)):
        todo = [r for s in wave for r in s]
        ds = _from_table(pa.Table.from_pylist(todo), batch, actors).map_batches(
            OldTextActor, fn_constructor_kwargs={"encoder": encoder, "batch_size": batch}, batch_size=batch,
            batch_format="pyarrow", concurrency=actors, num_cpus=1)
        result = _collect(ds)
        vectors = dict(zip(result["id"].to_pylist(), result["embedding"].to_pylist(), strict=True))
        for s, shard in enumerate(wave):
            storage.write_parquet(str(out / "embeddings" / f"part-{w:02d}{s:02d}.parquet"), pa.table({
                "id": [r["id"] for r in shard], "text": [r["text"] for r in shard],
                "embedding": pa.array([vectors[r["id"]] for r in shard], pa.list_(pa.float32()))}))


class OldVideoActor:
    def __init__(self, encoder: dict, sampling: dict) -> None:
        import torch

        from egoray.features.vision import ImageEncoder
        from egoray.models.clip import ClipModel
        from egoray.stages.video import Sampling

        torch.set_num_threads(1)
        self.encoder = ImageEncoder(ClipModel(**encoder))
        self.sampling = Sampling(**sampling)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from egoray.stages.video import extract, to_npy

        out = []
        for row in batch.to_pylist():
            feats, _, _, _ = extract(row["path"], None, None, self.sampling,
                                     lambda frames: self.encoder.encode_stream(frames, 32), self.encoder.size)
            out.append(to_npy(feats))
        return pa.table({"key": batch["key"], "npy": pa.array(out, pa.binary())})


def old_video_features(videos: list[Path], out: Path, num_shards: int = 8, per_wave: int = 8) -> None:
    from egoray import storage
    from egoray.stages.video import from_npy

    rows = [{"key": p.stem, "path": str(p)} for p in videos]
    for w, wave in enumerate(_waves(rows, "key", num_shards, per_wave)):
        todo = [r for s in wave for r in s]
        ds = _from_table(pa.Table.from_pylist(todo), 1, 1).map_batches(
            OldVideoActor, fn_constructor_kwargs={"encoder": {"name": "tiny-clip"}, "sampling": {"fps": 1.875}},
            batch_size=1, batch_format="pyarrow", concurrency=1, num_cpus=1)
        results = {r["key"]: from_npy(r["npy"]) for r in _collect(ds).to_pylist()}
        for s, shard in enumerate(wave):
            if shard:
                storage.write_hdf5_shard(str(out / "features" / f"part-{w:02d}{s:02d}.h5"),
                                         {r["key"]: results[r["key"]] for r in shard})


def bench_throughput(work: Path, texts: int, videos: int) -> None:
    import shutil

    import ray

    from egoray.pipelines import job_module, load_config
    from egoray.runtime import ensure_ray

    text_src, video_src = work / f"texts-{texts}", work / f"videos-{videos}"
    if not text_src.exists():
        write_texts(text_src, texts)
    write_videos(video_src, videos)
    ensure_ray()

    def ours(config: str, overrides: list[str]) -> float:
        cfg = load_config(str(ROOT / config), overrides)
        t0 = time.perf_counter()
        job_module(cfg.job).run(cfg, overwrite=True)
        return time.perf_counter() - t0

    def timed(fn: Any, *args: Any) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    # warm-up: worker processes, imports, the tiny models' caches
    warm = work / "warm"
    write_texts(warm, 500)
    ours("configs/demo/text_features.yaml", [f"input={warm}", f"output={work / 'warm-out'}"])
    results: dict[str, Any] = {"texts": texts, "videos": videos}
    for name in ("text", "video"):
        shutil.rmtree(work / f"old-{name}", ignore_errors=True)
    # the old executor as the shipped real configs set it (text_features: 512 shards, 32 per wave,
    # i.e. 16 waves; video_features: 64 waves, here 8 for 40 videos), and at its best (one wave)
    old_text_1 = timed(old_text_features, text_src, work / "old-text", 1, 128, 8, 8)
    shutil.rmtree(work / "old-text", ignore_errors=True)
    old_text_16 = timed(old_text_features, text_src, work / "old-text", 1, 128, 512, 32)
    new_text = ours("configs/demo/text_features.yaml", [f"input={text_src}", f"output={work / 'new-text'}"])
    vids = sorted((video_src / "videos").glob("*.mp4"))
    old_video_1 = timed(old_video_features, vids, work / "old-video", 8, 8)
    shutil.rmtree(work / "old-video", ignore_errors=True)
    old_video_8 = timed(old_video_features, vids, work / "old-video", 64, 8)
    new_video = ours("configs/demo/video_features.yaml", [f"input={video_src / 'videos'}",
                                                          f"output={work / 'new-video'}"])
    ray.shutdown()
    results.update({
        "text_new_s": new_text, "text_old_1_wave_s": old_text_1, "text_old_16_waves_s": old_text_16,
        "text_ratio_vs_1_wave": old_text_1 / new_text, "text_ratio_vs_16_waves": old_text_16 / new_text,
        "text_new_per_s": texts / new_text,
        "video_new_s": new_video, "video_old_1_wave_s": old_video_1, "video_old_8_waves_s": old_video_8,
        "video_ratio_vs_1_wave": old_video_1 / new_video, "video_ratio_vs_8_waves": old_video_8 / new_video,
        "video_new_per_s": videos / new_video})
    _save("scale-throughput", results)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_drive":
        drive(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_pairs":
        drive_pairs(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "throughput"])
    parser.add_argument("kind", nargs="?", choices=["text", "video", "pairs", "train"], default="text")
    parser.add_argument("--n", type=int, help="N (8N is also run); default 25,000 texts / 20 videos")
    parser.add_argument("--work", default=str(HERE / "_work" / "scale"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.what == "memory":
        bench_memory(args.kind, work, args.n or DEFAULT_N[args.kind])
    else:
        bench_throughput(work, args.n or 200_000, 40)


if __name__ == "__main__":
    main()
