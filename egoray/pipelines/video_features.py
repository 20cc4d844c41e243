"""``video_features`` job: per-time-step open_clip image features of videos or clip windows.

Input: a folder/URL of videos (mp4, webm, mkv, avi, mov, gif — whatever PyAV reads; the video
uid is the file stem) or a Parquet table of ``video_uid, path[, t_start, t_end][, clip_id]``
(relative paths are resolved against the table's folder). One actor pool decodes each video in
the actor, streaming, samples ``sampling.fps`` frames per second or ``sampling.num_frames`` per
window, and encodes them in batches; with ``tower`` (a ``train_video_text`` output) each window's
``sampling.num_frames`` frames go through that run's video tower together, one feature per window.
Output::

    OUTPUT/features/<part>.h5        one dataset per key [T, D], attrs fps, model, t_start, t_end
    OUTPUT/index/<part>.parquet      key, video_uid, file, n, dim, fps, model, t_start, t_end
    OUTPUT/clip_mean/<part>.parquet  key, embedding (frame mean), with sampling.clip_mean
    OUTPUT/rejects/<part>.parquet    corrupt, empty, unreadable videos with the reason
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
from pydantic import Field

from egoray import storage
from egoray.config import ActorPool, StreamingJobConfig, Url
from egoray.data.raw import InputError
from egoray.models.clip import ClipModel
from egoray.plans import Pass, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.video import FeatureSink, Sampling, VideoFeatureStage
from egoray.video_inputs import check_inputs, video_items

__all__ = ["Config", "Sampling", "read_features", "run"]


class Config(StreamingJobConfig, ActorPool):
    """Config of the ``video_features`` job."""

    job: Literal["video_features"] = "video_features"
    format: Literal["auto", "folder", "table"] = "auto"
    sampling: Sampling = Sampling()
    encoder: ClipModel = ClipModel()
    tower: Url | None = Field(None, description="a train_video_text output: its video tower encodes each window's "
                                                "sampling.num_frames frames into one feature (encoder unused)")
    normalize: bool = False
    dtype: Literal["float32", "float16"] = "float32"
    encode_batch: int = Field(32, ge=1, description="frames per encoder call")
    batch_size: int = Field(1, ge=1, description="videos per actor call")
    rows_per_file: int = Field(16, ge=1, description="videos committed together, one HDF5 shard (at least)")


def plan(config: Config) -> StreamingPlan:
    """The video_features job over ``config.input`` (checked here, before anything runs)."""
    inputs = check_inputs(config.input, config.format)
    model = f"{config.encoder.name}:{config.encoder.pretrained or 'random'}"
    if config.tower:
        if config.sampling.num_frames is None:
            raise InputError("tower: set sampling.num_frames (the frames of a window the tower sees together)")
        model = f"video_text:{config.tower}"
    stage = VideoFeatureStage(config.encoder, config.sampling, config.encode_batch, config.normalize,
                              config.resources(config.batch_size), tower=config.tower)
    sink = FeatureSink(id_column="key", stages=[stage.name], input_columns=["key", "video_uid", "path"],
                       model=model, fps=config.sampling.fps, dtype=config.dtype,
                       clip_mean=config.sampling.clip_mean)
    work = Pass("video_features", Source(video_items(config.input, config.format, inputs)), [stage], sink, "key",
                rows_per_file=config.rows_per_file)
    return StreamingPlan(work, inputs, lambda output: {"model": model})


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the video_features job; returns the run manifest."""
    return run_plan(config, overwrite, plan(config))


def read_features(output: str, key: str) -> np.ndarray:
    """The [T, D] features of one key from a video_features output (via its index)."""
    index = storage.read_parquet(storage.join(output, "index"))
    hit = index.filter(pc.equal(index["key"], key))
    if hit.num_rows == 0:
        raise KeyError(key)
    return storage.read_hdf5_shard(storage.join(output, hit["file"][0].as_py()), [key])[key]
