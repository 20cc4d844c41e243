"""The LLM jobs on the ``vllm`` engine, executed on CPU (the environment scripts/vllm_cpu_env.sh
builds; skipped where vLLM is not installed). One vLLM engine per actor for the whole job; the
tiny Llama (head_dim 32), chat prompts through its chat template, a small KV cache."""

import json

import pytest

from egoray import storage
from egoray.llm.schemas import validate_qa, validate_wrong_answers
from egoray.pipelines import qa, rephrase, validate_config
from tests.killing import assert_no_leftovers, kill_mid_run

pytest.importorskip("vllm", reason="needs vLLM: build its CPU environment with scripts/vllm_cpu_env.sh")
pytestmark = [pytest.mark.slow, pytest.mark.vllm]

GROUPS = 8
ENGINE = {"kind": "vllm", "model": "tiny:llama", "batch_size": 8, "kv_cache_gb": 0.25, "max_prompt_tokens": 512}
CHAT = {"version": "egotimeqa-chat-test", "chat": True, "system": "Reply with JSON only."}
# what a schema-constrained output can never be rejected for: only the checks no JSON schema can
# express (distinctness) may reject a row
SCHEMA_REASONS = {"empty_output", "not_utf8", "no_json", "invalid_json", "missing_field", "wrong_type", "too_long",
                  "wrong_count", "grammar_dead_end", "generation_error"}


def _qa_config(ingested, out, **engine):
    return validate_config({
        "job": "qa", "input": str(ingested), "output": str(out), "grouping": {"limit": GROUPS},
        "engine": {**ENGINE, **engine}, "prompts": CHAT,
        "question_params": {"max_new_tokens": 96, "temperature": 1.0},
        "wrong_answer_params": {"max_new_tokens": 96, "temperature": 1.0}})


def _rows(out):
    table = storage.read_parquet(str(out / "qa"))
    return sorted(table.select(["group_id", "question", "answer", "wrong_answers"]).to_pylist(),
                  key=lambda r: r["group_id"])


def test_qa_on_vllm_writes_valid_rows_and_resumes_to_the_same_rows(ingested_small, tmp_path):
    out = tmp_path / "qa"
    manifest = qa.run(_qa_config(ingested_small, out))
    stages = manifest["stages"]
    assert stages["question"]["in"] == GROUPS
    for c in stages.values():
        assert c["in"] == c["out"] + c["rejected"]
    assert manifest["model_loads"] == {"generate": 1}  # one engine for both steps and every retry
    rows = _rows(out)
    assert rows, "no QA row at all"
    for row in rows:
        assert validate_qa(json.dumps({"question": row["question"], "answer": row["answer"]}), 10, 5).ok
        assert validate_wrong_answers(json.dumps({"wrong_answers": row["wrong_answers"]}), row["answer"], 3, 5).ok
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    assert len(rows) + len(rejects) == GROUPS
    assert not {r["reason"] for r in rejects} & SCHEMA_REASONS  # structured output enforced, not just checked
    assert storage.read_parquet(str(out / "qa"))["prompt_version"].unique().to_pylist() == ["egotimeqa-chat-test"]

    # two actors, other batches, SIGKILL mid-run, resumed: the uninterrupted run's rows (vLLM's
    # per-request seeds come from the row seeds)
    two = _qa_config(ingested_small, tmp_path / "qa2", batch_size=3, num_actors=2)
    two = two.model_copy(update={"rows_per_file": 2})
    assert kill_mid_run(two, tmp_path) >= 1
    resumed = qa.run(two)
    assert resumed["items_this_run"] < resumed["items"] == GROUPS
    assert resumed["model_loads"] == {"generate": 2}
    assert _rows(tmp_path / "qa2") == rows
    assert_no_leftovers(tmp_path / "qa2")


def test_rephrase_on_vllm(ingested_small, tmp_path):
    out = tmp_path / "r"
    config = validate_config({
        "job": "rephrase", "input": str(ingested_small), "output": str(out), "limit": 10, "k": 3,
        "engine": ENGINE, "params": {"max_new_tokens": 16, "temperature": 1.0},
        "prompts": {"version": "rephrase-chat-test", "chat": True, "paraphrase": "Say it otherwise: {text}"}})
    manifest = rephrase.run(config)
    c = manifest["stages"]["paraphrase"]
    assert c["in"] == 10 == c["out"] + c["rejected"] and c["out"] > 0
    assert manifest["model_loads"] == {"generate": 1}
    for row in storage.read_parquet(str(out / "paraphrases")).to_pylist():
        keys = [" ".join(p.lower().split()) for p in row["paraphrases"]]
        assert 1 <= len(keys) <= 3 and len(set(keys)) == len(keys) and row["text"].lower() not in keys
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    assert {r["reason"] for r in rejects} <= {"no_paraphrase"}
