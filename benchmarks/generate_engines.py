"""Benchmark: the qa job on the ``hf`` engine vs the ``vllm`` engine, both on this machine's CPUs.

Same model (``tiny:llama-random``: never stops early, so each call does the same work), same
narrations, prompts, JSON schemas, seeds and sampling parameters; only ``engine.kind`` differs.
The ``hf`` side runs one actor per core (one torch thread each, its best layout here); the
``vllm`` side one actor holding one ``vllm.LLM`` with every core. vLLM's prefix caching (the
prompts share their long instruction) is measured on and off. Run in the vLLM CPU environment:

    scripts/vllm_cpu_env.sh
    .venv-vllm-cpu/bin/python benchmarks/generate_engines.py --narrations 400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import measure  # noqa: E402
from benchmarks.generate import MAX_NEW_TOKENS, MODEL, make_narrations  # noqa: E402


def run_job(source: Path, out: Path, n: int, engine: list[str], env: dict[str, str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = measure([sys.executable, "-m", "egoray", "run", str(ROOT / "configs/demo/qa.yaml"), f"input={source}",
                    f"output={out}", f"engine.model={MODEL}", "grouping.max_group=1", "grouping.limit=null",
                    f"question_params.max_new_tokens={MAX_NEW_TOKENS}",
                    f"wrong_answer_params.max_new_tokens={MAX_NEW_TOKENS}", f"ray.num_cpus={os.cpu_count()}",
                    *engine], env=env)
    if proc.returncode != 0:
        sys.exit(f"{engine} failed:\n{proc.output[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    assert run["stages"]["question"]["in"] == n, run["stages"]
    job = run["timings"]["wall_this_run"]
    return {"job_seconds": round(job, 1), "narrations_per_s": round(n / job, 2), "cli_seconds": round(proc.seconds, 1),
            "peak_pss_gb": round(proc.peak_mb / 1024, 2),
            "qa_rows": run["exported"], "rejects": sum(c["rejected"] for c in run["stages"].values()),
            "reject_reasons": _reasons(out),
            "tokens": run["units"].get("tokens_generated"), "engine_starts": run["model_loads"]}


def _reasons(out: Path) -> dict[str, int]:
    from egoray import storage

    rejects = storage.read_parquet(str(out / "rejects"))
    return {str(r["values"]): int(r["counts"]) for r in rejects["reason"].value_counts().to_pylist()} \
        if rejects.num_rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--narrations", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", default=str(HERE / "_work"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from egoray.models.tiny import resolve_model

    resolve_model(MODEL)
    source = make_narrations(work, args.narrations)
    env = {"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    cpus = os.cpu_count() or 1
    n = args.narrations
    hf = run_job(source, work / "qa-hf", n, ["engine.kind=hf", f"engine.num_actors={cpus}",
                                              f"engine.batch_size={args.batch_size}"], env)
    vllm = {}
    for caching in (True, False):
        vllm[caching] = run_job(source, work / f"qa-vllm-{caching}", n, [
            "engine.kind=vllm", "engine.num_actors=1", f"engine.cpus_per_actor={cpus}",
            f"engine.batch_size={args.batch_size}", "engine.kv_cache_gb=1",
            f"engine.engine_kwargs.enable_prefix_caching={str(caching).lower()}"], env)
    results = {"narrations": n, "cpus": cpus, "max_new_tokens": MAX_NEW_TOKENS, "model": MODEL, "hf": hf,
               "vllm_prefix_caching_on": vllm[True], "vllm_prefix_caching_off": vllm[False],
               "ratio_vllm_over_hf": round(hf["job_seconds"] / vllm[True]["job_seconds"], 2),
               "ratio_caching_on_over_off": round(vllm[False]["job_seconds"] / vllm[True]["job_seconds"], 2)}
    print(json.dumps(results, indent=2))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "generate_engines.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
