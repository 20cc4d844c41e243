"""Jobs: one module per job, each with a ``Config`` model, ``plan(config)`` — the declaration of
what the job runs, built before anything runs (a :class:`~egoray.plans.StreamingPlan`, a
:class:`~egoray.train.job.TrainingPlan` or a :class:`~egoray.runner.ShardedPlan`) — and
``run(config, overwrite)``, which hands that plan to its runner.

Modules are imported on demand so that ``egoray run`` loads only the job it runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from egoray.config import ConfigError, JobConfig, apply_overrides, describe_errors, read_yaml

JOBS: dict[str, str] = {
    "ingest": "egoray.pipelines.ingest",
    "qa": "egoray.pipelines.qa",
    "rephrase": "egoray.pipelines.rephrase",
    "text_features": "egoray.pipelines.text_features",
    "video_features": "egoray.pipelines.video_features",
    "import_features": "egoray.pipelines.import_features",
    "captions": "egoray.pipelines.captions",
    "train_dual_encoder": "egoray.pipelines.train_dual_encoder",
    "train_narrator": "egoray.pipelines.train_narrator",
    "train_video_text": "egoray.pipelines.train_video_text",
    "train_vlm": "egoray.pipelines.train_vlm",
    "narrate": "egoray.pipelines.narrate",
    "eval": "egoray.pipelines.eval",
}


def job_names() -> list[str]:
    return sorted(JOBS)


def job_module(name: str) -> ModuleType:
    return importlib.import_module(JOBS[name])


def config_class(name: str) -> type:
    return job_module(name).Config


def load_config(url: str, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job config, apply overrides and validate it against its job's model."""
    data = apply_overrides(read_yaml(url), list(overrides or []))
    return validate_config(data, source=url)


def validate_config(data: dict[str, Any], source: str = "<config>") -> JobConfig:
    job = data.get("job")
    if not job:
        raise ConfigError(f"{source}: key 'job' is missing (one of: {', '.join(job_names())})")
    try:
        model = config_class(job)
    except KeyError:
        raise ConfigError(
            f"{source}: key 'job': unknown job {job!r} (one of: {', '.join(job_names())})"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: " + describe_errors(e)) from None
