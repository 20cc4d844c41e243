"""``rephrase`` job (LaViLa Rephraser): k paraphrases per narration, de-duplicated, original kept.

A seq2seq paraphraser (T5 family, e.g. ``ramsrigouthamg/t5-large-paraphraser-diverse-high-quality``)
or a causal LM samples ``k`` candidates per narration on one actor pool; candidates are cleaned
(first line, spaces), and those empty, equal to the original or to another candidate (ignoring case
and punctuation) are dropped. A narration left with none is retried with the next attempt's seeds,
then rejected. Output::

    OUTPUT/paraphrases/<part>.parquet   narration id, video, times, text, paraphrases
    OUTPUT/rephraser.pkl                LaViLa's rephraser metadata: [(video_uid, start, end,
                                        [original, paraphrase, ...])], by video and time
    OUTPUT/rejects/<part>.parquet
    OUTPUT/run.json
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import StreamingJobConfig
from egoray.data.narrations import Split, check_narrations, split_filter
from egoray.exports import run_export
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import RephrasePrompts
from egoray.llm.steps import ParaphraseStep, clean_paraphrases
from egoray.plans import Pass, Prepared, SortLimit, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.base import Sink, with_constants, write_part
from egoray.stages.generate import llm_stage

__all__ = ["PARAPHRASES", "Config", "clean_paraphrases", "run"]

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
COLUMNS = ["narration_id", "video_uid", "t_start", "t_end", "text"]


class Config(StreamingJobConfig):
    """Config of the ``rephrase`` job."""

    job: Literal["rephrase"] = "rephrase"
    splits: list[Split] | None = None
    limit: int | None = Field(None, ge=1, description="only the first N narrations by id")
    k: int = Field(3, ge=1, le=32, description="candidates sampled per narration")
    max_attempts: int = Field(2, ge=1)
    engine: EngineConfig = EngineConfig(model="tiny:t5")
    params: GenerationParams = GenerationParams(max_new_tokens=48, temperature=1.0, top_k=120)
    prompts: RephrasePrompts = RephrasePrompts()
    rows_per_file: int = Field(256, ge=1, description="narrations committed together (a file per table)")
    pickle_style: Literal["egoray", "lavila"] = Field(
        "egoray", description="rephraser.pkl texts as ingest cleaned them, or in LaViLa's #C C style")


def write_rephraser_pkl(output: str, style: str = "egoray") -> int:
    """``rephraser.pkl`` from ``paraphrases/``: LaViLa's ``--metadata`` input (the rephrased
    narrations in place of the originals), one tuple per narration with its original text first."""
    import pickle

    from egoray.data.lavila import lavila_style

    url = storage.join(output, "paraphrases")
    table = storage.read_parquet(url) if storage.listdir(url, ".parquet") else PARAPHRASES.empty_table()
    out = []
    for r in table.sort_by([("video_uid", "ascending"), ("t_start", "ascending"),
                            ("narration_id", "ascending")]).to_pylist():
        texts = [r["text"], *r["paraphrases"]]
        out.append((r["video_uid"], r["t_start"], r["t_end"],
                    [lavila_style(t) for t in texts] if style == "lavila" else texts))
    storage.write_bytes(storage.join(output, "rephraser.pkl"), pickle.dumps(out, protocol=4))
    return len(out)


@dataclass
class ParaphraseSink(Sink):
    prompt_version: str = ""
    model: str = ""

    def empty_tables(self) -> dict[str, pa.Table]:
        return {**super().empty_tables(), "paraphrases": PARAPHRASES.empty_table()}

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        out = with_constants(rows, prompt_version=self.prompt_version, model=self.model)
        write_part(output, "paraphrases", base, out.select(PARAPHRASES.names).cast(PARAPHRASES))
        return {"paraphrases": sum(len(p) for p in rows["paraphrases"].to_pylist())}


def plan(config: Config) -> StreamingPlan:
    """The rephrase job over ``config.input`` (its narrations checked here, before anything runs)."""
    source = check_narrations(config.input)
    names = storage.parquet_schema(source).names
    where = split_filter(config.splits)
    columns = COLUMNS + (["split"] if where else [])
    read = columns if "split" in names or not where else COLUMNS
    if config.limit is not None:  # the first N by id: written once, so a resumed run takes the same N
        items = Source(Prepared("narrations", Source(source, columns=columns, where=where),
                                [SortLimit("narration_id", config.limit)]), columns=read)
    else:
        items = Source(source, columns=read, where=where)
    step = ParaphraseStep(config.params, config.prompts, config.k, config.max_attempts)
    sink = ParaphraseSink(id_column="narration_id", stages=[step.name], input_columns=["narration_id", "text"],
                          prompt_version=config.prompts.version, model=config.engine.model)
    work = Pass("rephrase", items, [llm_stage(config.engine, [step], "narration_id")], sink, "narration_id",
                rows_per_file=config.rows_per_file)

    def finish(output: str) -> dict[str, Any]:
        n = run_export(write_rephraser_pkl, output, config.pickle_style)
        return {"rephraser_pkl": storage.join(output, "rephraser.pkl"), "narrations_in_pkl": n}

    return StreamingPlan(work, [source], finish)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the rephrase job; returns the run manifest."""
    return run_plan(config, overwrite, plan(config))
