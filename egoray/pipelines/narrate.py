"""``narrate`` job (LaViLa narrator inference): n sampled captions per video window, with scores.

``backend: vlm`` narrates from frames with a BLIP-2-family model instead (VideoBLIP / EILEV,
:mod:`egoray.pipelines.narrate_vlm`); the output is the same.

Windows come from a table (``video_uid, t_start, t_end[, window_id]`` — ground-truth clips,
``clips.parquet``, or an ingest output's narrations) or, with ``windows.mode: dense``, from fixed
windows tiling every video of the ``video_features`` output. A Ray Data pass grouped by video
samples each window's video tokens from that video's features (read once per video) — or, for a
narrator trained on a video tower, decodes each window's frames from ``videos`` as its training
did — into ``_work/windows``; one actor pool runs the trained narrator over them: batched top-p sampling
with a KV cache, each caption seeded by (seed, window, sample). Output::

    OUTPUT/captions/<part>.parquet   caption_id (<window_id>#<k>), window_id, video_uid, t_start,
                                     t_end, k, text, nll (mean per token), entropy (mean per step)
    OUTPUT/rejects/<part>.parquet    windows whose video has no features
    OUTPUT/total.pkl                 LaViLa's format: [(video_uid, start, end, [texts], [scores])],
                                     scores the NLLs (or, total_pkl.scores: lavila, LaViLa's exp(entropy))
    OUTPUT/run.json
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from egoray import storage
from egoray.config import ActorPool, StreamingJobConfig, StrictModel, Url
from egoray.data.raw import InputError
from egoray.data.splits import videos_in_splits
from egoray.data.tables import table_columns
from egoray.exports import run_export
from egoray.models.vlm import VLMOptions
from egoray.plans import MapBatches, MapGroups, Pass, Prepared, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.narrate import (
    CaptionSink,
    DenseWindows,
    NarratorStage,
    SampleWindows,
    Sampling,
    TableWindows,
    write_total_pkl,
)

__all__ = ["Config", "Sampling", "Windows", "run", "write_total_pkl"]


class Windows(StrictModel):
    mode: Literal["table", "dense"] = "table"
    length: float = Field(4.0, gt=0, description="dense: window length in seconds")
    stride: float = Field(4.0, gt=0, description="dense: step between window starts")
    uncovered: Url | None = Field(None, description="dense: leave out windows overlapping a narration of this "
                                                    "ingest output (LaViLa's pseudo-narrations of unnarrated time)")
    offset_sec: float = Field(0.0, ge=0, description="table: widen each window by this on both sides")


class TotalPkl(StrictModel):
    """How ``total.pkl`` is written (the Parquet captions keep everything)."""

    style: Literal["egoray", "lavila"] = Field("egoray", description="lavila: texts in LaViLa's #C C style")
    scores: Literal["nll", "lavila"] = Field(
        "nll", description="nll: mean negative log-likelihood per token; lavila: exp of the mean next-token entropy")


class Config(StreamingJobConfig, ActorPool):
    """Config of the ``narrate`` job (``input``: a window table, or the video_features output when dense)."""

    job: Literal["narrate"] = "narrate"
    backend: Literal["narrator", "vlm"] = Field(
        "narrator", description="narrator: our trained narrator over video features; vlm: a BLIP-2-family model on frames")
    model: Url | None = Field(None, description="a train_narrator output (backend narrator)")
    vlm: VLMOptions = VLMOptions()
    videos: Url | None = Field(None, description="folder holding <video_uid>.<ext>: vlm with a clip table, or a "
                                                "narrator trained on a video tower")
    reencode_vfr: bool = Field(False, description="vlm: re-encode variable-frame-rate videos to constant rate")
    vfr_tolerance: float = Field(0.1, gt=0, description="vlm: allowed frame-interval deviation from the median")
    video_features: Url | None = Field(None, description="default: input (dense mode)")
    windows: Windows = Windows()
    video_splits: Url | None = Field(None, description="a splits.json: narrate only videos of `splits`")
    splits: list[str] = ["val", "test"]
    sampling: Sampling = Sampling()
    total_pkl: TotalPkl = TotalPkl()
    batch_size: int = Field(32, ge=1, description="windows per generate call")
    rows_per_file: int = Field(256, ge=1, description="windows committed together (a file per table)")

    @model_validator(mode="after")
    def _backend_inputs(self) -> Config:
        if self.backend == "narrator" and not self.model:
            raise ValueError("backend narrator needs model (a train_narrator output)")
        if self.backend == "vlm" and self.total_pkl.scores == "lavila":
            raise ValueError("total_pkl.scores lavila needs the narrator's entropies; a vlm's total.pkl holds NLLs")
        if self.backend == "vlm" and self.windows.mode == "dense" and self.video_features:
            raise ValueError("backend vlm reads frames: dense windows tile the videos of `input`, not video_features")
        return self


def window_table(url: str) -> tuple[str, str | None]:
    """The window table of ``url`` (an ingest output's narrations, or a table) and its id column."""
    source, names = table_columns(url, ("video_uid", "t_start", "t_end"), "window table")
    return source, next((c for c in ("window_id", "clip_id", "narration_id") if c in names), None)


def plan(config: Config) -> StreamingPlan:
    """The narrate job's plan (inputs and the narrator's export checked here, before anything runs)."""
    from egoray.models.checkpoint import load_exported_kind
    from egoray.models.narrator import NarratorConfig

    if config.backend == "vlm":
        from egoray.pipelines.narrate_vlm import plan_vlm

        return plan_vlm(config)
    blob = load_exported_kind(config.model, "narrator", "a narrator")
    narrator = NarratorConfig(**blob["config"])
    w = config.windows
    tower = narrator.tower is not None  # LaViLa's narrator: frames through its own video tower
    if tower and not config.videos:
        raise InputError(f"{config.model}: this narrator sees frames through its video tower; set videos "
                         "(the folder holding <video_uid>.<ext>)")
    features = config.video_features or config.input
    if (w.mode == "dense" or not tower) and not storage.exists(storage.join(features, "index")):
        raise InputError(f"{features}: not a video_features output (no index/ table)"
                         + (": dense windows tile the videos it indexes" if tower else ""))
    videos = videos_in_splits(config.video_splits, config.splits)
    if w.mode == "table":
        source, id_col = window_table(config.input)
        inputs = [source]
    else:
        source, id_col, inputs = storage.join(features, "index"), None, []
        if w.uncovered:
            from egoray.data.narrations import check_narrations

            inputs = [check_narrations(w.uncovered)]  # other narrations: other windows
    if w.mode == "dense":
        windows = Source(source, columns=["key", "n", "fps", "t_start"])
        steps: list[MapBatches | MapGroups] = [MapBatches(DenseWindows(w.length, w.stride, videos, w.uncovered))]
    else:
        windows = Source(source, columns=[c for c in (id_col, "video_uid", "t_start", "t_end") if c])
        steps = [MapBatches(TableWindows(id_col, w.offset_sec, videos))]
    if tower:  # each window's frames, decoded by Ray Data CPU workers as in training
        from egoray.data.videos import video_paths
        from egoray.models.clip import image_size
        from egoray.stages.clips import DecodeClips

        decode = DecodeClips(video_paths(config.videos) or {}, narrator.tower.num_frames,
                             image_size(narrator.tower.vision), 0.0, stage="features")
        steps.append(MapBatches(decode, batch_size=16))
    else:
        steps.append(MapGroups("video_uid", SampleWindows(features, narrator.num_frames)))
    prepared = Prepared("windows", windows, steps, empty=f"{config.input}: no windows to narrate")
    stage = NarratorStage(config.model, config.sampling, config.gpus_per_actor > 0,
                          config.resources(config.batch_size))
    sink = CaptionSink(id_column="window_id", stages=["features", "narrate"],
                       input_columns=["window_id", "video_uid", "t_start", "t_end"])
    work = Pass("narrate", Source(prepared), [stage], sink, "window_id", rows_per_file=config.rows_per_file)

    def finish(output: str) -> dict[str, Any]:
        n = run_export(write_total_pkl, output, config.total_pkl.style, config.total_pkl.scores)
        return {"model": config.model, "windows": n, "total_pkl": storage.join(output, "total.pkl")}

    return StreamingPlan(work, inputs, finish)


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the narrate job (either backend); returns the run manifest."""
    return run_plan(config, overwrite, plan(config))
