"""Benchmark: EgoTimeQA generation for 2,000 narrations, our batched Ray Data job vs the reference way.

Both sides use the same tiny random-weight Llama (``tiny:llama-random``, built offline: it never stops
early, so every call does the same work on both sides) on the same
narrations, with one question–answer item per narration:

- **reference** (seed 000): a transformers ``pipeline("text-generation")``; per narration one
  call for the question–answer pair and one for the wrong answers (``do_sample``,
  temperature 0.5, top-k 10 for the second), each parsed with ``literal_eval`` as the seed does.
- **egoray**: ``egoray run configs/demo/qa.yaml`` with ``grouping.max_group=1`` (one item per
  narration), batched generation on an actor pool (one actor per core), JSON-schema-constrained
  decoding, validation, retries, Parquet + EgoTimeQA export.

    uv run python benchmarks/generate.py                # 2,000 narrations
    uv run python benchmarks/generate.py --narrations 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import measure  # noqa: E402

MAX_NEW_TOKENS = 128
MODEL = "tiny:llama-random"


def make_narrations(work: Path, n: int) -> Path:
    """A narrations Parquet file with ``n`` synthetic narrations (Ray-free ingest stages)."""
    from egoray import storage
    from egoray.data.ego4d import read_narration_json
    from egoray.data.narrations import CleanOptions, build_narrations
    from egoray.data.synth import synthesize
    from egoray.stages.base import StageTimer

    target = work / f"narrations-{n}.parquet"
    if target.exists():
        return target
    data = work / "synth"
    synthesize(str(data), videos=max(1, n // 15 + 1), seed=0, actions_per_video=10, with_videos=False)
    raw, _ = read_narration_json((data / "narration.json").read_bytes())
    narrations, _ = build_narrations(raw, CleanOptions(), None, StageTimer())
    storage.write_parquet(str(target), narrations.slice(0, n))
    return target


def reference(narrations: str, n_items: int) -> None:
    """Seed 000's way, per narration: pipeline call, literal_eval, second call, literal_eval."""
    from ast import literal_eval

    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from egoray.models.tiny import resolve_model

    path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    pipe.model.config.pad_token_id = pipe.model.config.eos_token_id
    texts = pq.read_table(narrations)["text"].to_pylist()[:n_items]
    parsed = 0
    t0 = time.perf_counter()
    for text in texts:
        prompt = (f"You are an AI assistant. Generate one QA pair in JSON format: {{\"Q\": <question>, "
                  f"\"A\": <answer>}} based on the following narration. The question should be in past tense, "
                  f"within 10 words. The answer should be concise, within 5 words.\n{text}\n")
        out = pipe(prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.5, return_full_text=False)
        try:
            qa = literal_eval(out[0]["generated_text"])
            question, answer = qa["Q"], qa["A"]
            parsed += 1
        except Exception:  # the reference silently drops what it cannot parse
            question, answer = "What did I do?", "something"
        prompt2 = (f"I'll provide a question and its correct answer. Generate three plausible, but incorrect, "
                   f"answers. Question: {question} Correct Answer: {answer}. Wrong Answers:")
        out2 = pipe(prompt2, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.5, top_k=10,
                    return_full_text=False)
        try:
            literal_eval(out2[0]["generated_text"])
        except Exception:
            pass
    print(json.dumps({"items": len(texts), "parsed": parsed, "seconds": time.perf_counter() - t0}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--narrations", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", default=str(HERE / "_work"))
    parser.add_argument("--reference", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        reference(args.reference[0], int(args.reference[1]))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from egoray.models.tiny import resolve_model

    resolve_model(MODEL)  # build once, outside both timings
    source = make_narrations(work, args.narrations)
    env = {"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}

    ref = measure([sys.executable, __file__, "--reference", str(source), str(args.narrations)], env=env)
    if ref.returncode != 0:
        sys.exit(f"reference failed:\n{ref.output[-3000:]}")
    ref_inner = json.loads(ref.output.strip().splitlines()[-1])

    out = work / "qa-ours"
    shutil.rmtree(out, ignore_errors=True)
    ours = measure([sys.executable, "-m", "egoray", "run", str(ROOT / "configs/demo/qa.yaml"), f"input={source}",
                    f"output={out}", f"engine.model={MODEL}", "grouping.max_group=1", "grouping.limit=null",
                    "prompts.chat=false", 'prompts.system=""', "prompts.version=egotimeqa-v1",
                    f"engine.batch_size={args.batch_size}", f"engine.num_actors={os.cpu_count()}",
                    f"question_params.max_new_tokens={MAX_NEW_TOKENS}",
                    f"wrong_answer_params.max_new_tokens={MAX_NEW_TOKENS}",
                    f"ray.num_cpus={os.cpu_count()}"], env=env)
    if ours.returncode != 0:
        sys.exit(f"egoray failed:\n{ours.output[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    n = args.narrations
    assert run["units"]["narrations"] == n, run["units"]
    job = run["timings"]["wall_this_run"]
    results = {
        "narrations": n,
        "cpus": os.cpu_count(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "reference": {"seconds": round(ref_inner["seconds"], 1), "narrations_per_s": round(n / ref_inner["seconds"], 2),
                      "parsed": ref_inner["parsed"]},
        "egoray": {"job_seconds": round(job, 1), "narrations_per_s": round(n / job, 2),
                   "cli_seconds": round(ours.seconds, 1), "cli_narrations_per_s": round(n / ours.seconds, 2),
                   "qa_rows": run["exported"], "rejects": sum(c["rejected"] for c in run["stages"].values())},
    }
    results["ratio_job"] = round(ref_inner["seconds"] / job, 2)
    results["ratio_cli"] = round(ref.seconds / ours.seconds, 2)
    print(json.dumps(results, indent=2))
    print(f"\nreference: {results['reference']['narrations_per_s']:>8} narrations/s "
          f"({ref_inner['parsed']}/{n} parsed by literal_eval)")
    print(f"egoray:    {results['egoray']['narrations_per_s']:>8} narrations/s "
          f"({results['egoray']['qa_rows']} valid QA sets, {results['egoray']['rejects']} rejects with reasons)")
    print(f"ratio:     {results['ratio_job']}x (job), {results['ratio_cli']}x (whole command incl. Ray start)")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "generate.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
