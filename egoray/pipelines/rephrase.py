"""``rephrase`` job (LaViLa Rephraser): k paraphrases per narration, de-duplicated, original kept.

A seq2seq paraphraser (T5 family, e.g. ``ramsrigouthamg/t5-large-paraphraser-diverse-high-quality``)
or a causal LM samples ``k`` candidates per narration; candidates are cleaned (first line, spaces),
and those empty, equal to the original or to another candidate (ignoring case and punctuation) are
dropped. A narration left with none is retried, then rejected. Output::

    OUTPUT/paraphrases/part-<shard>.parquet   narration id, video, times, text, paraphrases
    OUTPUT/rejects/part-<shard>.parquet
    OUTPUT/run.json
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from egoray.config import JobConfig
from egoray.data.narrations import Split, input_files, load_narrations
from egoray.data.schema import REJECTS
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import RephrasePrompts
from egoray.llm.retry import generate_validated
from egoray.llm.schemas import Parsed
from egoray.runtime import ShardLedger, assign_shards, ensure_ray, finish, waves

PARAPHRASES = pa.schema(
    [
        ("narration_id", pa.string()),
        ("video_uid", pa.string()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("text", pa.string()),
        ("paraphrases", pa.list_(pa.string())),
        ("prompt_version", pa.string()),
        ("model", pa.string()),
    ]
)


class Config(JobConfig):
    """Config of the ``rephrase`` job."""

    job: Literal["rephrase"] = "rephrase"
    splits: list[Split] | None = None
    limit: int | None = Field(None, ge=1, description="only the first N narrations")
    k: int = Field(3, ge=1, le=32, description="candidates sampled per narration")
    max_attempts: int = Field(2, ge=1)
    engine: EngineConfig = EngineConfig(model="tiny:t5")
    params: GenerationParams = GenerationParams(max_new_tokens=48, temperature=1.0, top_k=120)
    prompts: RephrasePrompts = RephrasePrompts()
    num_shards: int = Field(8, ge=1, le=4096)
    shards_per_wave: int = Field(4, ge=1)


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def clean_paraphrases(original: str, candidates: list[str]) -> list[str]:
    """First line of each candidate, de-duplicated, without the original; order kept."""
    seen = {_key(original)}
    out = []
    for cand in candidates:
        line = next((ln.strip() for ln in (cand or "").splitlines() if ln.strip()), "")
        line = re.sub(r"^(paraphrase|paraphrased output)\s*:\s*", "", line, flags=re.IGNORECASE)
        line = " ".join(line.split())
        key = _key(line)
        if not key or key in seen:
            continue
        seen.add(key)
        out.append(line)
    return out


def validate(row: dict[str, Any], outputs: list[str]) -> Parsed:
    kept = clean_paraphrases(row["text"], outputs)
    if not kept:
        return Parsed(reason="no_paraphrase", detail=f"{len(outputs)} candidates, all empty or repeats")
    return Parsed(value=kept)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the rephrase job; returns the run manifest."""
    wall0 = time.perf_counter()
    narrations = load_narrations(config.input, config.splits).sort_by("narration_id")
    if config.limit is not None:
        narrations = narrations.slice(0, config.limit)
    rows = narrations.select(["narration_id", "video_uid", "t_start", "t_end", "text"]).to_pylist()
    shard_ids, by_shard = assign_shards(rows, "video_uid", config.num_shards)

    ledger = ShardLedger(config.output)
    ledger.prepare(config, shard_ids, overwrite=overwrite, inputs=input_files(config.input),
                   items=[r["narration_id"] for r in rows])
    done_before = ledger.completed()
    ensure_ray(config.ray)
    plan = waves(shard_ids, done_before, config.shards_per_wave)
    for w, wave in enumerate(plan, 1):
        todo = [r for s in wave for r in by_shard[s]]
        print(f"[rephrase] wave {w}/{len(plan)}: {len(wave)} shard(s), {len(todo)} narrations", flush=True)
        for r in todo:
            r["prompt"] = config.prompts.paraphrase.format(text=r["text"])
        t0 = time.perf_counter()
        outcomes = generate_validated(todo, id_col="narration_id", prompt_col="prompt", engine=config.engine,
                                      params=config.params, validate=validate, n=config.k,
                                      max_attempts=config.max_attempts, columns=["text"])
        seconds = time.perf_counter() - t0
        for s in wave:
            out, rejects = [], []
            for r in by_shard[s]:
                o = outcomes[r["narration_id"]]
                if o.ok:
                    out.append({**{k: r[k] for k in ("narration_id", "video_uid", "t_start", "t_end", "text")},
                                "paraphrases": o.value, "prompt_version": config.prompts.version,
                                "model": config.engine.model})
                else:
                    rejects.append({"record_id": r["narration_id"], "stage": "paraphrase", "reason": o.parsed.reason,
                                    "detail": o.parsed.detail,
                                    "input": json.dumps({"text": r["text"], "raw_output": o.raw,
                                                         "attempts": o.attempts}, ensure_ascii=False)[:8000]})
            n = len(by_shard[s])
            ledger.commit(s, {"paraphrases": pa.Table.from_pylist(out, schema=PARAPHRASES),
                              "rejects": pa.Table.from_pylist(rejects, schema=REJECTS)},
                          {"paraphrase": {"in": n, "out": len(out), "rejected": len(rejects)}},
                          {"seconds": seconds * n / max(1, len(todo)),
                           "paraphrases": sum(len(r["paraphrases"]) for r in out)})

    markers = ledger.completed()
    manifest = finish(config, ledger, shard_ids, done_before, wall0, ["paraphrases", "rejects"],
                      {"paraphrases_total": sum(m.get("paraphrases", 0) for m in markers.values())})
    manifest.write()
    return manifest.to_dict()
