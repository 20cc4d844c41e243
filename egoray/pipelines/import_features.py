"""``import_features`` job: Ego4D's released per-video features into egoray's feature layout.

Input: a folder of ``<video_uid>.pt`` files (Ego4D's ``omnivore_video_swinl``, ``slowfast8x8_r101_k400``,
...: ``[T, D]`` tensors, 1.875 features per second). One actor pool loads the files
(``torch.load(weights_only=True)``) and the workers write them as a ``video_features`` output, so
training, narration and evaluation use the official features like any others::

    OUTPUT/features/<part>.h5        one dataset per video [T, D], attrs fps, model, t_start, t_end
    OUTPUT/index/<part>.parquet      key, video_uid, file, n, dim, fps, model, t_start, t_end
    OUTPUT/rejects/<part>.parquet    files that are not one [T, D] tensor (unreadable, unsafe_file)
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from egoray import storage
from egoray.config import StreamingJobConfig
from egoray.data.raw import InputError
from egoray.data.videos import ITEMS
from egoray.plans import Listed, Pass, Prepared, Source, StreamingPlan
from egoray.runner import run_plan
from egoray.stages.base import Resources
from egoray.stages.imported import LoadFeatureFiles
from egoray.stages.video import FeatureSink

__all__ = ["Config", "run"]


class Config(StreamingJobConfig):
    """Config of the ``import_features`` job (``input``: a folder of ``<video_uid>.pt``)."""

    job: Literal["import_features"] = "import_features"
    fps: float = Field(1.875, gt=0, description="features per second (Ego4D: a feature every 16 frames at 30 fps)")
    model: str = Field("ego4d:omnivore_video_swinl", description="names the features in the index")
    dtype: Literal["float32", "float16"] = "float32"
    batch_size: int = Field(8, ge=1, description="files per actor call")
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    rows_per_file: int = Field(64, ge=1, description="videos committed together (one HDF5 shard at least)")


def feature_files(url: str) -> list[str]:
    """The ``.pt`` files of the folder (names may start with ``_``; hidden ones are skipped)."""
    if not storage.exists(url):
        raise InputError(f"input not found: {url}")
    files = storage.listdir(url, ".pt", skip=(".",))
    if not files:
        raise InputError(f"no feature files (<video_uid>.pt) under {url}")
    return files


def plan(config: Config) -> StreamingPlan:
    """The import_features job over the ``.pt`` files of ``config.input`` (listed here)."""
    files = feature_files(config.input)  # a changed, added or removed file refuses a resume

    def items() -> pa.Table:  # the plan: file names, not features
        stems = [PurePosixPath(f).stem for f in files]
        return pa.table({"key": stems, "video_uid": stems, "path": files, "t_start": pa.nulls(len(files), pa.float64()),
                         "t_end": pa.nulls(len(files), pa.float64())}, schema=ITEMS)

    stage = LoadFeatureFiles(config.fps, Resources(cpus=config.cpus_per_actor, actors=config.num_actors,
                                                   batch_size=config.batch_size))
    sink = FeatureSink(id_column="key", stages=[stage.name], input_columns=["key", "video_uid", "path"],
                       model=config.model, fps=config.fps, dtype=config.dtype)
    work = Pass("import_features", Source(Prepared("files", Listed(items, f"the {len(files)} .pt files of "
                                                                          f"{config.input}"))),
                [stage], sink, "key", rows_per_file=config.rows_per_file)
    return StreamingPlan(work, files, lambda output: {"model": config.model, "fps": config.fps})


def run(config: Config, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) the import_features job; returns the run manifest."""
    return run_plan(config, overwrite, plan(config))
