"""Jobs: one module per job, each with a ``Config`` model and a ``run(config, overwrite)``.

Modules are imported on demand so that ``egoray run`` loads only the job it runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

JOBS: dict[str, str] = {
    "ingest": "egoray.pipelines.ingest",
    "qa": "egoray.pipelines.qa",
    "rephrase": "egoray.pipelines.rephrase",
    "text_features": "egoray.pipelines.text_features",
    "video_features": "egoray.pipelines.video_features",
    "captions": "egoray.pipelines.captions",
    "train_dual_encoder": "egoray.pipelines.train_dual_encoder",
    "train_narrator": "egoray.pipelines.train_narrator",
    "narrate": "egoray.pipelines.narrate",
    "eval": "egoray.pipelines.eval",
}


def job_names() -> list[str]:
    return sorted(JOBS)


def job_module(name: str) -> ModuleType:
    return importlib.import_module(JOBS[name])


def config_class(name: str) -> type:
    return job_module(name).Config
