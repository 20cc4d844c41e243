"""``captions`` job (seed 002): CoCa frame captions → de-duplicated → one LLM summary per video.

Per video, on three actor pools for the whole job: frames sampled with PyAV (``sampling``) and
captioned by an open_clip CoCa model, the captions embedded by CoCa's text tower and near-repeats
clustered away (one kept per cluster, time order kept); the kept captions go through the summary
step (few-shot LLM prompt, validated and retried); the summary is embedded by the same CoCa text
tower. Output::

    OUTPUT/captions/<part>.parquet  video_uid, frame_times, frame_captions, kept_captions, summary,
                                    image_embedding (frame mean, CoCa image tower),
                                    summary_embedding (CoCa text tower), models
    OUTPUT/rejects/<part>.parquet   unreadable videos (stage caption), failed summaries (stage summary)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from egoray.config import ActorPool, StreamingJobConfig
from egoray.features.captions import CaptionOptions
from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.llm.prompts import SummaryPrompts
from egoray.llm.steps import SummaryStep
from egoray.models.clip import ClipModel
from egoray.plans import Pass, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.base import Sink, with_constants, write_part
from egoray.stages.captions import CaptionStage, CocaTextStage
from egoray.stages.generate import llm_stage
from egoray.stages.video import Sampling
from egoray.video_inputs import check_inputs, video_items

CAPTIONS = pa.schema(
    [
        ("video_uid", pa.string()),
        ("frame_times", pa.list_(pa.float64())),
        ("frame_captions", pa.list_(pa.string())),
        ("kept_captions", pa.list_(pa.string())),
        ("summary", pa.string()),
        ("image_embedding", pa.list_(pa.float32())),
        ("summary_embedding", pa.list_(pa.float32())),
        ("caption_model", pa.string()),
        ("summary_model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


class Config(StreamingJobConfig, ActorPool):
    """Config of the ``captions`` job."""

    job: Literal["captions"] = "captions"
    format: Literal["auto", "folder", "table"] = "auto"
    sampling: Sampling = Sampling(fps=1.0)
    coca: ClipModel = ClipModel(name="tiny-coca")
    caption: CaptionOptions = CaptionOptions()
    seed: int = Field(0, description="captions are sampled with seeds from (seed, video, frame)")
    dedupe_threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity that makes captions one")
    summary_engine: EngineConfig = EngineConfig(model="tiny:llama")
    summary_params: GenerationParams = GenerationParams(max_new_tokens=48, temperature=0.7)
    summary_prompts: SummaryPrompts = SummaryPrompts()
    max_attempts: int = Field(3, ge=1)
    rows_per_file: int = Field(16, ge=1, description="videos committed together (a file per table)")


@dataclass
class CaptionsSink(Sink):
    caption_model: str = ""
    summary_model: str = ""
    prompt_version: str = ""

    def empty_tables(self) -> dict[str, pa.Table]:
        return {**super().empty_tables(), "captions": CAPTIONS.empty_table()}

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        out = with_constants(rows.set_column(rows.schema.get_field_index("video_uid"), "video_uid", rows["key"]),
                             caption_model=self.caption_model, summary_model=self.summary_model,
                             prompt_version=self.prompt_version)
        write_part(output, "captions", base, out.select(CAPTIONS.names).cast(CAPTIONS))
        return {"frames": sum(len(c) for c in rows["frame_captions"].to_pylist())}


def plan(config: Config) -> StreamingPlan:
    """The captions job over ``config.input`` (checked here, before anything runs)."""
    inputs = check_inputs(config.input, config.format)
    caption_model = f"{config.coca.name}:{config.coca.pretrained or 'random'}"
    summary = SummaryStep(config.summary_params, config.summary_prompts, max_attempts=config.max_attempts)
    stages = [CaptionStage(config.coca, config.caption, config.sampling, config.dedupe_threshold, config.seed,
                           config.resources(batch_size=1)),
              llm_stage(config.summary_engine, [summary], "key"),
              CocaTextStage(config.coca, resources=config.resources(batch_size=32))]
    sink = CaptionsSink(id_column="key", stages=["caption", "summary", "embed_summary"],
                        input_columns=["key", "path"], caption_model=caption_model,
                        summary_model=config.summary_engine.model, prompt_version=config.summary_prompts.version)
    work = Pass("captions", Source(video_items(config.input, config.format, inputs)), stages, sink, "key",
                rows_per_file=config.rows_per_file)
    return StreamingPlan(work, inputs, lambda output: {"caption_model": caption_model})


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the captions job; returns the run manifest."""
    return run_plan(config, overwrite, plan(config))
