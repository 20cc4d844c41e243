"""``qa`` job (EgoTimeQA): open question–answer pairs with three wrong answers, from narrations.

Narrations are grouped (1–5 consecutive narrations of one video and pass, spanning under 30 s);
for each group an LLM writes a question (past tense, ≤ 10 words, "I" for the camera wearer) and a
short answer, then three plausible wrong answers. Every output is validated; a failure is retried
up to ``max_attempts`` times and then written to ``rejects`` with its raw output. Output::

    OUTPUT/qa/part-<shard>.parquet        group, times, question, answer, wrong_answers, attempts
    OUTPUT/rejects/part-<shard>.parquet   group id, stage, reason, detail, raw output + narrations
    OUTPUT/annotations.EgoTimeQA.json     the EgoTimeQA export (DESIGN §4)
    OUTPUT/run.json
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import JobConfig, StrictModel
from egoray.data.grouping import group_narrations
from egoray.data.narrations import Split, input_files, load_narrations
from egoray.data.schema import REJECTS
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import QAPrompts
from egoray.llm.retry import Outcome, generate_validated
from egoray.llm.schemas import qa_schema, validate_qa, validate_wrong_answers, wrong_answers_schema
from egoray.runtime import ShardLedger, assign_shards, ensure_ray, finish, waves

EXPORT_FILE = "annotations.EgoTimeQA.json"

QA = pa.schema(
    [
        ("group_id", pa.string()),
        ("video_uid", pa.string()),
        ("pass", pa.int8()),
        ("narration_ids", pa.list_(pa.string())),
        ("narrations", pa.list_(pa.string())),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("wrong_answers", pa.list_(pa.string())),
        ("attempts_question", pa.int16()),
        ("attempts_wrong_answers", pa.int16()),
        ("prompt_version", pa.string()),
        ("model", pa.string()),
    ]
)


class Grouping(StrictModel):
    max_group: int = Field(5, ge=1, le=50, description="narrations per group at most")
    max_span_sec: float = Field(30.0, gt=0, description="a group spans less than this")
    limit: int | None = Field(None, ge=1, description="only the first N groups (demos, trials)")


class Limits(StrictModel):
    max_question_words: int = Field(10, ge=1)
    max_answer_words: int = Field(5, ge=1)
    n_wrong: int = Field(3, ge=1)
    max_attempts: int = Field(3, ge=1, description="tries per item before it goes to rejects")


class Config(JobConfig):
    """Config of the ``qa`` job."""

    job: Literal["qa"] = "qa"
    splits: list[Split] | None = Field(None, description="only narrations of these splits")
    grouping: Grouping = Grouping()
    limits: Limits = Limits()
    engine: EngineConfig = EngineConfig()
    question_params: GenerationParams = GenerationParams(max_new_tokens=96, temperature=0.5)
    wrong_answer_params: GenerationParams = GenerationParams(max_new_tokens=96, temperature=0.5, top_k=10)
    prompts: QAPrompts = QAPrompts()
    fps: float = Field(30.0, gt=0, description="frame rate of the exported moment frames")
    num_shards: int = Field(8, ge=1, le=4096)
    shards_per_wave: int = Field(4, ge=1, description="shards generated together between commits")


def question_prompt(group: dict[str, Any], prompts: QAPrompts) -> str:
    lines = [prompts.narration_line.format(text=t, t_start=group["t_start"], t_end=group["t_end"])
             for t in group["texts"]]
    return prompts.question.format(narrations="\n".join(lines))


def _reject(group: dict[str, Any], stage: str, outcome: Outcome) -> dict[str, Any]:
    parsed = outcome.parsed
    payload = {"narrations": group["texts"], "raw_output": (outcome.raw or [""])[0], "attempts": outcome.attempts}
    if "question" in group:
        payload.update(question=group["question"], answer=group["answer"])
    return {"record_id": group["group_id"], "stage": stage, "reason": parsed.reason, "detail": parsed.detail,
            "input": json.dumps(payload, ensure_ascii=False)[:8000]}


def process_wave(groups: list[dict[str, Any]], config: Config) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Generate and validate QA for some groups: (qa rows, reject rows, outcome stage per group)."""
    lim = config.limits
    for g in groups:
        g["prompt"] = question_prompt(g, config.prompts)
    questions = generate_validated(
        groups, id_col="group_id", prompt_col="prompt", engine=config.engine, params=config.question_params,
        schema=qa_schema(lim.max_question_words, lim.max_answer_words), max_attempts=lim.max_attempts,
        validate=lambda row, outs: validate_qa(outs[0] if outs else None, lim.max_question_words,
                                               lim.max_answer_words),
    )
    rejects, asked = [], []
    for g in groups:
        outcome = questions[g["group_id"]]
        if not outcome.ok:
            rejects.append(_reject(g, "question", outcome))
            continue
        g["question"], g["answer"] = outcome.value
        g["attempts_question"] = outcome.attempts
        g["prompt"] = config.prompts.wrong_answers.format(question=g["question"], answer=g["answer"])
        asked.append(g)
    wrong = generate_validated(
        asked, id_col="group_id", prompt_col="prompt", engine=config.engine, params=config.wrong_answer_params,
        schema=wrong_answers_schema(lim.n_wrong, lim.max_answer_words), max_attempts=lim.max_attempts,
        validate=lambda row, outs: validate_wrong_answers(outs[0] if outs else None, row["answer"], lim.n_wrong,
                                                          lim.max_answer_words),
        columns=["answer"],
    )
    rows = []
    for g in asked:
        outcome = wrong[g["group_id"]]
        if not outcome.ok:
            rejects.append(_reject(g, "wrong_answers", outcome))
            continue
        rows.append({
            "group_id": g["group_id"], "video_uid": g["video_uid"], "pass": g["pass"],
            "narration_ids": g["narration_ids"], "narrations": g["texts"], "t_start": g["t_start"],
            "t_end": g["t_end"], "question": g["question"], "answer": g["answer"], "wrong_answers": outcome.value,
            "attempts_question": g["attempts_question"], "attempts_wrong_answers": outcome.attempts,
            "prompt_version": config.prompts.version, "model": config.engine.model,
        })
    return rows, rejects, {}


def export_egotimeqa(qa: pa.Table, fps: float) -> list[dict[str, Any]]:
    """The EgoTimeQA JSON list: moment frames at ``fps`` from each group's time window."""
    rows = sorted(qa.to_pylist(), key=lambda r: r["group_id"])
    return [
        {
            "video_id": r["video_uid"],
            "sample_id": r["group_id"],
            "question": r["question"],
            "answer": r["answer"],
            "moment_start_frame": round(float(r["t_start"] * fps), 3),
            "moment_end_frame": round(float(r["t_end"] * fps), 3),
            "wrong_answers": list(r["wrong_answers"]),
        }
        for r in rows
    ]


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the qa job; returns the run manifest."""
    wall0 = time.perf_counter()
    narrations = load_narrations(config.input, config.splits)
    groups = group_narrations(narrations, config.grouping.max_group, config.grouping.max_span_sec)
    if config.grouping.limit is not None:
        groups = groups.slice(0, config.grouping.limit)
    shard_ids, by_shard = assign_shards(groups.to_pylist(), "video_uid", config.num_shards)

    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, inputs=input_files(config.input),
                   items=groups["group_id"].to_pylist())
    done_before = ledger.completed()
    ensure_ray(config.ray)
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        wave_groups = [g for s in wave for g in by_shard[s]]
        print(f"[qa] wave {w}/{len(plan)}: {len(wave)} shard(s), {len(wave_groups)} groups", flush=True)
        t0 = time.perf_counter()
        rows, rejects, _ = process_wave(wave_groups, config)
        seconds = time.perf_counter() - t0
        for s in wave:
            ids = {g["group_id"] for g in by_shard[s]}
            shard_rows = [r for r in rows if r["group_id"] in ids]
            shard_rejects = [r for r in rejects if r["record_id"] in ids]
            q_rejected = sum(1 for r in shard_rejects if r["stage"] == "question")
            w_rejected = len(shard_rejects) - q_rejected
            n = len(ids)
            stages = {
                "question": {"in": n, "out": n - q_rejected, "rejected": q_rejected},
                "wrong_answers": {"in": n - q_rejected, "out": len(shard_rows), "rejected": w_rejected},
            }
            ledger.commit(s, {"qa": pa.Table.from_pylist(shard_rows, schema=QA),
                              "rejects": pa.Table.from_pylist(shard_rejects, schema=REJECTS)},
                          stages, {"seconds": seconds * n / max(1, len(wave_groups)),
                                   "narrations": sum(len(g["narration_ids"]) for g in by_shard[s])})

    markers = ledger.completed()
    manifest = finish(config, ledger, shard_ids, done_before, wall0, ["qa", "rejects"], {
        "groups": groups.num_rows, "narrations": sum(m.get("narrations", 0) for m in markers.values())})
    if manifest.status == "complete":
        qa = storage.read_parquet(storage.join(config.output, "qa"))
        storage.write_json(storage.join(config.output, EXPORT_FILE), export_egotimeqa(qa, config.fps))
        manifest.extra["export"] = storage.join(config.output, EXPORT_FILE)
    manifest.write()
    return manifest.to_dict()
