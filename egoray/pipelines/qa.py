"""``qa`` job (EgoTimeQA): open question–answer pairs with three wrong answers, from narrations.

Narrations are grouped as GroundVQA groups them (1–5 consecutive narrations of one video and pass
spanning under 30 s, the length drawn per clip with a seed; point narrations widened first) by
a Ray Data pass grouped by video, written to ``_work/groups``; one actor pool then asks an LLM,
for each group, for a question (past tense, ≤ 10 words, "I" for the camera wearer) and a short
answer, then three plausible wrong answers. Every output is validated; a failure is retried with
the next attempt's seeds up to ``max_attempts`` times, then written to ``rejects`` with its raw
output. Output::

    OUTPUT/qa/<part>.parquet            group, times, question, answer, wrong_answers, attempts
    OUTPUT/rejects/<part>.parquet       group id, stage, reason, detail, raw output + narrations
    OUTPUT/annotations.EgoTimeQA.json   the EgoTimeQA export (DESIGN §4)
    OUTPUT/run.json
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from egoray import storage
from egoray.config import StreamingJobConfig, StrictModel
from egoray.data.grouping import GROUPS, group_narrations
from egoray.data.narrations import Split, check_narrations, split_filter
from egoray.exports import run_export
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import QAPrompts
from egoray.llm.steps import QuestionStep, WrongAnswersStep
from egoray.plans import MapGroups, Pass, Prepared, SortLimit, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.base import Sink, with_constants, write_part
from egoray.stages.generate import llm_stage

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
    seed: int | None = Field(0, description="a group's length is drawn from 1 to the longest that fits, seeded per "
                                            "clip (GroundVQA); null: always the longest")
    point_window_sec: float = Field(4.0, ge=0, description="a point narration (t_start = t_end, narration.json) "
                                                           "covers this much time around it")
    limit: int | None = Field(None, ge=1, description="only the first N groups by id (demos, trials)")


class Limits(StrictModel):
    max_question_words: int = Field(10, ge=1)
    max_answer_words: int = Field(5, ge=1)
    n_wrong: int = Field(3, ge=1)
    max_attempts: int = Field(3, ge=1, description="tries per item before it goes to rejects")
    acceptance: Literal["strict", "groundvqa"] = Field(
        "strict", description="strict: decoding constrained to the JSON schema, word limits and distinct wrong "
        "answers checked, max_attempts tries; groundvqa: as GroundVQA's generators, unconstrained, one try, "
        "accepted when the output is a Python literal holding the fields (no limits checked)")


class Config(StreamingJobConfig):
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
    normalize_durations: bool = Field(True, description="the export's moments as GroundVQA's merge.py leaves them: "
                                                        "each duration divided by the mean, about its centre")
    rows_per_file: int = Field(256, ge=1, description="groups committed together (a file per table)")


@dataclass
class QASink(Sink):
    prompt_version: str = ""
    model: str = ""

    def empty_tables(self) -> dict[str, pa.Table]:
        return {**super().empty_tables(), "qa": QA.empty_table()}

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        out = with_constants(rows.rename_columns({"texts": "narrations"}), prompt_version=self.prompt_version,
                             model=self.model)
        write_part(output, "qa", base, out.select(QA.names).cast(QA))
        return {"narrations": sum(len(x) for x in rows["narration_ids"].to_pylist())}


def groups_of_video(batch: pa.Table, max_group: int, max_span: float, seed: int | None = None,
                    point_window: float = 0.0) -> pa.Table:
    """:func:`group_narrations` of one video's narrations (a ``map_groups`` function); point
    narrations first get ``point_window`` seconds around them (a zero-length moment otherwise)."""
    start = pc.cast(batch["t_start"], pa.float64())
    end = pc.cast(batch["t_end"], pa.float64())
    point = pc.fill_null(pc.equal(start, end), False)
    if point_window > 0 and pc.any(point).as_py():
        half = point_window / 2
        batch = batch.set_column(batch.schema.get_field_index("t_start"), "t_start",
                                 pc.if_else(point, pc.max_element_wise(pc.subtract(start, half), 0.0), start))
        batch = batch.set_column(batch.schema.get_field_index("t_end"), "t_end",
                                 pc.if_else(point, pc.add(end, half), end))
    elif pc.any(point).as_py():
        warnings.warn("point narrations (t_start = t_end) with grouping.point_window_sec 0: their groups' moments "
                      "have no length", stacklevel=2)
    return group_narrations(batch, max_group, max_span, seed)


def export_egotimeqa(qa: pa.Table, fps: float, normalize: bool = True) -> list[dict[str, Any]]:
    """The EgoTimeQA JSON list as GroundVQA writes it: moment frames ``int(t · fps)`` of each
    group's window and, with ``normalize`` (its ``merge.py``), each moment's duration divided by
    the mean duration of all moments, about the moment's centre; ``start_sec``/``end_sec`` and the
    group's narrations (joined by spaces) as they were."""
    rows = sorted(qa.to_pylist(), key=lambda r: r["group_id"])
    frames = [(int(r["t_start"] * fps), int(r["t_end"] * fps)) for r in rows]
    mean = float(np.mean([(b - a) / fps for a, b in frames])) if frames else 0.0
    out = []
    for r, (a, b) in zip(rows, frames, strict=True):
        start, end = float(a), float(b)
        if normalize and mean > 0:
            centre, duration = (a + b) / 2 / fps, (b - a) / fps / mean
            start, end = (centre - duration / 2) * fps, (centre + duration / 2) * fps
        out.append({"video_id": r["video_uid"], "sample_id": r["group_id"], "question": r["question"],
                    "answer": r["answer"], "start_sec": r["t_start"], "end_sec": r["t_end"],
                    "moment_start_frame": start, "moment_end_frame": end,
                    "narrations": " ".join(r["narrations"]), "wrong_answers": list(r["wrong_answers"])})
    return out


def write_export(output: str, fps: float, normalize: bool = True) -> int:
    """Read ``qa/`` and write the EgoTimeQA JSON (a worker's job: the export is one file)."""
    qa_url = storage.join(output, "qa")
    table = storage.read_parquet(qa_url) if storage.listdir(qa_url, ".parquet") else QA.empty_table()
    items = export_egotimeqa(table, fps, normalize)
    storage.write_json(storage.join(output, EXPORT_FILE), items)
    return len(items)


def plan(config: Config) -> StreamingPlan:
    """The qa job over ``config.input`` (its narrations checked here, before anything runs)."""
    source = check_narrations(config.input)
    g = config.grouping
    names = storage.parquet_schema(source).names
    wanted = ("narration_id", "video_uid", "pass", "text", "raw_text", "t_start", "t_end", "split")
    narrations = Source(source, columns=[c for c in wanted if c in names], where=split_filter(config.splits))
    grouping: list[MapGroups | SortLimit] = [
        MapGroups("video_uid", groups_of_video, (g.max_group, g.max_span_sec, g.seed, g.point_window_sec))]
    if g.limit:
        grouping.append(SortLimit("group_id", g.limit))
    lim = config.limits
    steps = [QuestionStep(config.question_params, config.prompts, lim.max_question_words, lim.max_answer_words,
                          lim.max_attempts, lim.acceptance),
             WrongAnswersStep(config.wrong_answer_params, config.prompts, lim.n_wrong, lim.max_answer_words,
                              lim.max_attempts, lim.acceptance)]
    sink = QASink(id_column="group_id", stages=[s.name for s in steps], prompt_version=config.prompts.version,
                  model=config.engine.model)
    work = Pass("qa", Source(Prepared("groups", narrations, grouping), columns=GROUPS.names),
                [llm_stage(config.engine, steps, "group_id")], sink, "group_id", rows_per_file=config.rows_per_file)

    def finish(output: str) -> dict[str, Any]:
        n = run_export(write_export, output, config.fps, config.normalize_durations)
        return {"export": storage.join(output, EXPORT_FILE), "exported": n}

    return StreamingPlan(work, [source], finish)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the qa job; returns the run manifest."""
    return run_plan(config, overwrite, plan(config))
