"""The in-process executor against the Ray executor: the same job, the same input.

    uv run python benchmarks/inprocess.py            # --texts N: N and 8N narrations
    uv run python benchmarks/inprocess.py --job qa   # qa: its groups prepared from all N narrations

``text_features`` streams a batch at a time. ``qa`` first prepares its input from the whole
source — every narration grouped by video, then the first ``grouping.limit`` groups by id — which
in process holds the whole source in memory; the LLM then writes only those groups' QA sets.

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
            "split": ["train"] * len(ids), "pass": pa.array([1] * len(ids), pa.int8()), "verb": [verbs[i % 5] for i in ids], "noun": [nouns[i // 5 % 5] for i in ids],
            "text": [f"The camera wearer {verbs[i % 5]} the {nouns[i // 5 % 5]} {i % 7}" for i in ids]}))


JOBS = {  # each job's demo config and overrides
    "text_features": ["text_features.yaml", "batch_size=256"],
    "qa": ["qa.yaml", "grouping.limit=16", "question_params.max_new_tokens=24", "wrong_answer_params.max_new_tokens=24"],
}


def _run(job: str, work: Path, out: Path, in_process: bool) -> dict:
    config, *overrides = JOBS[job]
    cmd = [sys.executable, "-m", "egoray", "run", str(ROOT / "configs" / "demo" / config),
           f"input={work / 'narrations'}", f"output={out}", "ray.num_cpus=2", *overrides]
    m = measure(cmd + (["--in-process"] if in_process else []))  # no RAY_ADDRESS: a local Ray
    if m.returncode != 0:
        raise SystemExit(m.output[-3000:])
    run = json.loads((out / "run.json").read_text())
    first = next(iter(run["stages"].values()))
    return {"seconds": round(m.seconds, 2), "group_peak_mb": round(m.peak_mb), "rows": first["in"],
            "job_seconds": round(run["timings"]["wall_this_run"], 2)}


def _rows(job: str, out: Path) -> list:
    """The job's output rows, to check that both executors wrote the same."""
    from egoray import storage

    if job == "qa":
        tables = [storage.read_parquet(str(out / t)) for t in ("qa", "rejects") if (out / t).exists()]
        return sorted(str(r) for t in tables for r in t.to_pylist())
    return sorted(storage.read_parquet(str(out / "embeddings"))["id"].to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--job", choices=sorted(JOBS), default="text_features")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="egoray-bench-") as tmp:
        for n in (args.texts, 8 * args.texts):
            work = Path(tmp) / f"n{n}"
            _narrations(work, n)
            ray = _run(args.job, work, work / "on_ray", in_process=False)
            local = _run(args.job, work, work / "in_process", in_process=True)
            assert ray["rows"] == local["rows"] == (n if args.job == "text_features" else 16), (ray, local)
            assert _rows(args.job, work / "on_ray") == _rows(args.job, work / "in_process"), "the outputs differ"
            results[n] = {"ray": ray, "in_process": local,
                          "ratio_seconds": round(ray["seconds"] / local["seconds"], 2)}
            print(n, json.dumps(results[n]), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    name = "inprocess" if args.job == "text_features" else f"inprocess-{args.job}"
    (HERE / "results" / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
