"""The in-process executor against the Ray executor: the same text_features job, the same input.

    uv run python benchmarks/inprocess.py            # --texts N: N and 8N narrations

Both are the whole ``egoray run`` command from process start to exit (what a user debugging a
stage waits for): ``--in-process`` runs the pass in the command's process; the reference way
starts a local Ray (one actor) and runs it on Ray Data. The model is ``tiny:sentence`` (built
offline), so the figures are about the executors, not the model. Memory: the peak summed PSS of
the command's process group — for ``--in-process`` all of the job; for the Ray run only what stays
in that group (the driver), since the raylet starts the model's actor outside it, so the two are
not compared. Both outputs are checked to hold the same rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import measure  # noqa: E402


def _narrations(folder: Path, n: int) -> None:
    from egoray import storage

    verbs, nouns = ["opens", "cuts", "washes", "picks up", "puts down"], ["door", "onion", "cup", "knife", "lid"]
    per_file = 5000
    for f, start in enumerate(range(0, n, per_file)):
        ids = range(start, min(n, start + per_file))
        storage.write_parquet(str(folder / "narrations" / f"part-{f:04d}.parquet"), pa.table({
            "narration_id": [f"n{i:07d}" for i in ids], "video_uid": [f"v{i // 100:05d}" for i in ids],
            "t_start": [float(i % 100) for i in ids], "t_end": [float(i % 100) + 1 for i in ids],
            "split": ["train"] * len(ids), "verb": [verbs[i % 5] for i in ids], "noun": [nouns[i // 5 % 5] for i in ids],
            "text": [f"The camera wearer {verbs[i % 5]} the {nouns[i // 5 % 5]} {i % 7}" for i in ids]}))


def _run(work: Path, out: Path, in_process: bool) -> dict:
    cmd = [sys.executable, "-m", "egoray", "run", str(ROOT / "configs" / "demo" / "text_features.yaml"),
           f"input={work / 'narrations'}", f"output={out}", "ray.num_cpus=2", "batch_size=256"]
    m = measure(cmd + (["--in-process"] if in_process else []))  # no RAY_ADDRESS: a local Ray
    if m.returncode != 0:
        raise SystemExit(m.output[-3000:])
    run = json.loads((out / "run.json").read_text())
    return {"seconds": round(m.seconds, 2), "group_peak_mb": round(m.peak_mb), "rows": run["stages"]["encode"]["out"],
            "job_seconds": round(run["timings"]["wall_this_run"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=5000)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="egoray-bench-") as tmp:
        for n in (args.texts, 8 * args.texts):
            work = Path(tmp) / f"n{n}"
            _narrations(work, n)
            ray = _run(work, work / "on_ray", in_process=False)
            local = _run(work, work / "in_process", in_process=True)
            assert ray["rows"] == local["rows"] == n, (ray, local)
            results[n] = {"ray": ray, "in_process": local,
                          "ratio_seconds": round(ray["seconds"] / local["seconds"], 2)}
            print(n, json.dumps(results[n]), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "inprocess.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
