"""Benchmark: ingest of a 1,000,000-narration Ego4D narration.json, ours vs the reference way.

The reference way is the Features tutorial's (seed 001): ``json.load`` the file, build
``(uid, text, timestamp, pass)`` tuples with list comprehensions over both passes, sort them,
substitute the tags with ``str.replace``, and pickle the metadata list. Ours is
``egoray run configs/demo/ingest.yaml`` on the same file: parse, validate, clean, de-duplicate,
write sharded Parquet plus rejects and run.json, on a local Ray it starts itself.

    uv run python benchmarks/ingest.py                  # 1,000,000 narrations
    uv run python benchmarks/ingest.py --narrations 100000

Each side runs in its own process group; memory is the peak summed PSS of that group.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import measure  # noqa: E402


def reference(narration_json: str, out: str) -> None:
    """The seed's way, timed inside the process (imports excluded)."""
    t0 = time.perf_counter()
    with open(narration_json) as f:
        narration_json_obj = json.load(f)
    uid_subset = list(narration_json_obj)
    narrations = [
        (uid, data["narration_text"], data["timestamp_sec"], 1)
        for uid in uid_subset
        for data in narration_json_obj[uid].get("narration_pass_1", {"narrations": []})["narrations"]
    ]
    narrations += [
        (uid, data["narration_text"], data["timestamp_sec"], 2)
        for uid in uid_subset
        for data in narration_json_obj[uid].get("narration_pass_2", {"narrations": []})["narrations"]
    ]
    narrations.sort(key=lambda x: (x[0], x[-1]))

    def sub_tagged_tokens(text: str) -> str:
        text = text.replace("#C", "Camera wearer")
        text = text.replace("#O", "Other person")
        text = text.replace("#unsure", "something")
        return text

    metadata = [
        {"uid": uid, "txt": sub_tagged_tokens(txt), "ts": ts, "idx": idx, "pass": pazz}
        for idx, (uid, txt, ts, pazz) in enumerate(narrations)
    ]
    with open(out, "wb") as f:
        pickle.dump(metadata, f)
    print(json.dumps({"rows": len(metadata), "seconds": time.perf_counter() - t0}))


def warm_run(narration_json: str, out: str, shards: int) -> None:
    """Our job on a Ray that is already up with warm workers, as on a cluster (Ray start-up and
    the workers' first imports excluded): a small warm-up job first, then the timed one."""
    import ray

    from egoray.data.synth import synthesize
    from egoray.pipelines import ingest, validate_config

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    synthesize(out + "-warmup-data", videos=20, seed=1, with_videos=False)
    warm = validate_config({"job": "ingest", "input": out + "-warmup-data/narration.json",
                            "output": out + "-warmup", "num_shards": shards})
    ingest.run(warm, overwrite=True)
    config = validate_config({"job": "ingest", "input": narration_json, "output": out, "num_shards": shards})
    t0 = time.perf_counter()
    manifest = ingest.run(config, overwrite=True)
    print(json.dumps({"rows": manifest["stages"]["validate"]["in"], "seconds": time.perf_counter() - t0}))
    ray.shutdown()


def make_input(work: Path, narrations: int) -> tuple[Path, int]:
    from egoray.data.synth import synthesize

    actions = 50
    per_video = actions * 1.9  # pass 2 skips about one narration in ten
    videos = math.ceil(narrations / per_video)
    data = work / f"synth-{videos}"
    if not (data / "manifest.json").exists():
        print(f"synthesizing {videos} videos x {actions} actions ...", flush=True)
        synthesize(str(data), videos=videos, seed=0, actions_per_video=actions, with_videos=False)
    manifest = json.loads((data / "manifest.json").read_text())
    return data / "narration.json", manifest["narrations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--narrations", type=int, default=1_000_000)
    parser.add_argument("--work", default=str(HERE / "_work"))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--reference", nargs=2, metavar=("JSON", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--warm", nargs=2, metavar=("JSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        reference(*args.reference)
        return
    if args.warm:
        warm_run(*args.warm, args.shards)
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source, n = make_input(work, args.narrations)
    size_mb = source.stat().st_size / 2**20
    print(f"input: {source} ({n:,} narrations, {size_mb:.0f} MB)", flush=True)

    ref = measure([sys.executable, __file__, "--reference", str(source), str(work / "reference.pkl")])
    if ref.returncode != 0:
        sys.exit(f"reference failed:\n{ref.output[-3000:]}")
    ref_inner = json.loads(ref.output.strip().splitlines()[-1])

    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    ours = measure([sys.executable, "-m", "egoray", "run", str(ROOT / "configs/demo/ingest.yaml"),
                    f"input={source}", f"output={out}", "splits=null", f"num_shards={args.shards}",
                    "clean.min_words=0", "ray.num_cpus=" + str(os.cpu_count())],
                   env={"RAY_USAGE_STATS_ENABLED": "0"})
    if ours.returncode != 0:
        sys.exit(f"egoray failed:\n{ours.output[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    job_seconds = run["timings"]["wall_this_run"]
    rows_in = run["stages"]["validate"]["in"]
    assert rows_in == n == ref_inner["rows"], (rows_in, n, ref_inner["rows"])

    warm = measure([sys.executable, __file__, "--warm", str(source), str(work / "ours-warm"),
                    "--shards", str(args.shards)], env={"RAY_USAGE_STATS_ENABLED": "0"})
    if warm.returncode != 0:
        sys.exit(f"egoray (warm) failed:\n{warm.output[-3000:]}")
    warm_inner = json.loads(warm.output.strip().splitlines()[-1])
    assert warm_inner["rows"] == n

    results = {
        "narrations": n,
        "input_mb": round(size_mb, 1),
        "cpus": os.cpu_count(),
        "reference": {"seconds": round(ref_inner["seconds"], 2), "rows_per_s": round(n / ref_inner["seconds"]),
                      "process_seconds": round(ref.seconds, 2), "peak_mb": round(ref.peak_mb)},
        "egoray": {"job_seconds": round(job_seconds, 2), "rows_per_s": round(n / job_seconds),
                   "cli_seconds_with_ray_start": round(ours.seconds, 2),
                   "cli_rows_per_s": round(n / ours.seconds), "peak_mb": round(ours.peak_mb)},
        "egoray_warm_ray": {"seconds": round(warm_inner["seconds"], 2),
                            "rows_per_s": round(n / warm_inner["seconds"])},
    }
    results["speedup_job"] = round(ref_inner["seconds"] / job_seconds, 2)
    results["speedup_cli"] = round(ref.seconds / ours.seconds, 2)
    results["speedup_warm_ray"] = round(ref_inner["seconds"] / warm_inner["seconds"], 2)
    results["memory_ratio"] = round(ours.peak_mb / ref.peak_mb, 2)
    print(json.dumps(results, indent=2))
    print(f"\nreference: {results['reference']['rows_per_s']:>9,} rows/s  peak {ref.peak_mb:,.0f} MB")
    print(f"egoray:    {results['egoray']['rows_per_s']:>9,} rows/s  peak {ours.peak_mb:,.0f} MB "
          f"(job only; {results['egoray']['cli_rows_per_s']:,} rows/s including Ray start-up)")
    print(f"warm Ray:  {results['egoray_warm_ray']['rows_per_s']:>9,} rows/s (job on an already running Ray)")
    print(f"ratio:     {results['speedup_job']}x (job, cold Ray), {results['speedup_warm_ray']}x (warm Ray), "
          f"{results['speedup_cli']}x (whole command)")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
