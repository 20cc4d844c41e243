"""Benchmarks of the feature-extraction stages, ours vs the reference way, on the same input.

    uv run --extra bench python benchmarks/features.py frames   # (a) 1 fps frame sampling
    uv run --extra bench python benchmarks/features.py frames --gop 30   # camera-like 1 s keyframes
    uv run --extra bench python benchmarks/features.py store    # (b) storing 50,000 768-d embeddings
    uv run --extra bench python benchmarks/features.py text     # (c) text embeddings: Ray Data vs plain encode

(a) reference (seed 002): ``ffmpeg -i video -vf fps=1 dir/%04d.png`` in a subprocess, then every
    PNG read back with PIL ``Image.open(...).convert("RGB")``; ours: ``egoray.video.decode``
    (PyAV in-process, streaming, only the sampled frames converted), full-resolution RGB arrays.
(b) reference (seed 001): one ``torch.save`` file per embedding; ours: ``storage.write_hdf5_shard``
    (one HDF5 file per shard of 10,000) and ``storage.write_parquet``.
(c) reference: ``SentenceTransformer.encode`` in one process using both cores; ours: the
    ``text_features`` job on an already running local Ray (one actor per core), output written.
    The model is a BERT-base-sized sentence-transformers model with random weights (built
    offline: the machine cannot download all-mpnet-base-v2), so the work per text is realistic.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def _save(name: str, results: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def bench_frames(work: Path, videos: int, size: int, fps: int, gop: int | None) -> None:
    from egoray.data.synth import synthesize
    from egoray.video.decode import iter_frames, probe, sample_times

    data = work / (f"videos-{videos}-{size}-{fps}" + (f"-gop{gop}" if gop else ""))
    if not (data / "videos.parquet").exists():
        print(f"rendering {videos} videos at {size}x{size}, {fps} fps, keyframe interval {gop or 250} ...", flush=True)
        synthesize(str(data), videos=videos, seed=0, actions_per_video=12, fps=fps, size=size, gop=gop)
    paths = sorted((data / "videos").glob("*.mp4"))
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        import imageio_ffmpeg

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    from PIL import Image

    t0 = time.perf_counter()
    ref_frames = 0
    for p in paths:
        with tempfile.TemporaryDirectory() as frames_dir:
            subprocess.run([ffmpeg, "-loglevel", "error", "-i", str(p), "-vf", "fps=1", f"{frames_dir}/%04d.png"],
                           check=True)
            for png in sorted(Path(frames_dir).glob("*.png")):
                with Image.open(png) as im:
                    np.asarray(im.convert("RGB"))
                ref_frames += 1
    ref_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    our_frames = 0
    for p in paths:
        info = probe(str(p))
        for _, _frame in iter_frames(str(p), sample_times(0.0, info.duration, rate=1.0)):
            our_frames += 1
    ours_s = time.perf_counter() - t0
    _save(f"frames-gop{gop or 250}", {"videos": len(paths), "size": size, "fps": fps, "gop": gop or 250,
                     "reference_frames": ref_frames,
                     "our_frames": our_frames, "reference_seconds": round(ref_s, 2), "our_seconds": round(ours_s, 2),
                     "reference_frames_per_s": round(ref_frames / ref_s, 1),
                     "our_frames_per_s": round(our_frames / ours_s, 1), "ratio": round(ref_s / ours_s, 2)})


def bench_store(work: Path, n: int, dim: int) -> None:
    import pyarrow as pa
    import torch

    from egoray import storage

    emb = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    ids = [f"narration-{i}" for i in range(n)]
    ref_dir = work / "torch_save"
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    for i in range(n):
        torch.save(torch.from_numpy(emb[i]), ref_dir / f"{i}.pt")
    ref_s = time.perf_counter() - t0

    ours_dir = work / "shards"
    shutil.rmtree(ours_dir, ignore_errors=True)
    per = 10_000
    t0 = time.perf_counter()
    for s in range(0, n, per):
        storage.write_hdf5_shard(str(ours_dir / f"part-{s // per:04d}.h5"),
                                 {"ids": np.array(ids[s:s + per], dtype="S"), "embeddings": emb[s:s + per]})
    h5_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, n, per):
        flat = pa.array(emb[s:s + per].reshape(-1))
        storage.write_parquet(str(ours_dir / f"part-{s // per:04d}.parquet"),
                              pa.table({"id": ids[s:s + per], "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)}))
    pq_s = time.perf_counter() - t0
    back = np.concatenate([storage.read_hdf5_shard(str(p))["embeddings"] for p in sorted(ours_dir.glob("*.h5"))])
    assert np.array_equal(back, emb)
    _save("store", {"embeddings": n, "dim": dim, "reference_seconds": round(ref_s, 2),
                    "hdf5_seconds": round(h5_s, 3), "parquet_seconds": round(pq_s, 3),
                    "ratio_hdf5": round(ref_s / h5_s, 1), "ratio_parquet": round(ref_s / pq_s, 1)})


def bench_text(work: Path, n: int) -> None:
    import pyarrow as pa

    from egoray import storage
    from egoray.models.tiny import resolve_model

    model_dir = resolve_model("tiny:sentence-base")
    texts = [f"The camera wearer picks up the {w} number {i} from the table" for i, w in
             enumerate(np.random.default_rng(0).choice(["cup", "knife", "onion", "bowl", "pan"], n))]
    src = work / f"texts-{n}.parquet"
    storage.write_parquet(str(src), pa.table({"narration_id": [str(i) for i in range(n)], "text": texts}))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    ref = subprocess.run([sys.executable, __file__, "_plain", str(src), model_dir], capture_output=True, text=True,
                         env=env, check=True)
    ref_inner = json.loads(ref.stdout.strip().splitlines()[-1])
    ours = subprocess.run([sys.executable, __file__, "_ray", str(src), str(work / "text-out")], capture_output=True,
                          text=True, env=env)
    if ours.returncode:
        sys.exit(ours.stderr[-3000:])
    ours_inner = json.loads(ours.stdout.strip().splitlines()[-1])
    _save("text", {"texts": n, "cpus": os.cpu_count(), "model": "BERT-base-sized, random weights",
                   "plain_seconds": round(ref_inner["seconds"], 2), "ray_job_seconds": round(ours_inner["seconds"], 2),
                   "plain_texts_per_s": round(n / ref_inner["seconds"], 1),
                   "ray_texts_per_s": round(n / ours_inner["seconds"], 1),
                   "ratio": round(ref_inner["seconds"] / ours_inner["seconds"], 3)})


def _plain(src: str, model_dir: str) -> None:
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    texts = pq.read_table(src)["text"].to_pylist()
    model = SentenceTransformer(model_dir, device="cpu")
    t0 = time.perf_counter()
    emb = model.encode(texts, batch_size=64, convert_to_numpy=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "shape": list(emb.shape)}))


def _ray(src: str, out: str) -> None:
    import ray

    from egoray.pipelines import text_features, validate_config

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    config = validate_config({"job": "text_features", "input": src, "output": out,
                              "encoder": {"model": "tiny:sentence-base"}, "batch_size": 64,
                              "num_actors": os.cpu_count(), "cpus_per_actor": 0.5})
    t0 = time.perf_counter()
    manifest = text_features.run(config, overwrite=True)
    assert manifest["stages"]["encode"]["out"] == manifest["stages"]["encode"]["in"]
    print(json.dumps({"seconds": time.perf_counter() - t0}))
    ray.shutdown()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_plain", "_ray"):
        {"_plain": _plain, "_ray": _ray}[sys.argv[1]](*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["frames", "store", "text"])
    parser.add_argument("--work", default=str(HERE / "_work"))
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval in frames (default x264's 250)")
    parser.add_argument("--embeddings", type=int, default=50_000)
    parser.add_argument("--texts", type=int, default=4000)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.which == "frames":
        bench_frames(work, args.videos, args.size, args.fps, args.gop)
    elif args.which == "store":
        bench_store(work, args.embeddings, 768)
    else:
        bench_text(work, args.texts)


if __name__ == "__main__":
    main()
