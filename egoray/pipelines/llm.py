"""What the LLM jobs share on the application side: the engine's stage, exports run by a worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egoray.llm.engine import EngineConfig
from egoray.stages.base import Stage
from egoray.stages.generate import LLMStage, Step


def llm_stage(engine: EngineConfig, steps: list[Step], id_column: str) -> Stage:
    """The ``hf`` engine's actor-pool stage, or the ``vllm`` engine's ``ray.data.llm`` operators."""
    if engine.kind == "vllm":
        from egoray.vllm_stage import VLLMStage

        return VLLMStage(engine, steps, id_column)
    return LLMStage(engine, steps, id_column)


def run_export(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an export (one file from a job's committed tables) in a worker, not in the driver."""
    import ray

    from egoray.executor import io_cpus, unwrap

    try:
        return ray.get(ray.remote(fn).options(num_cpus=io_cpus()).remote(*args))
    except Exception as e:
        raise unwrap(e) from None
