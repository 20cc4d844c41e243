"""What the LLM jobs share on the application side: the engine's stage, exports run by a worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egoray.errors import ray_errors
from egoray.llm.engine import EngineConfig, check_chat_template
from egoray.stages.base import Stage
from egoray.stages.generate import LLMStage, Step


def llm_stage(engine: EngineConfig, steps: list[Step], id_column: str) -> Stage:
    """The LLM stage: one engine (``hf`` or ``vllm``) per actor of one pool, for every step and retry."""
    if any(getattr(getattr(step, "prompts", None), "chat", False) for step in steps):
        check_chat_template(engine.model)
    return LLMStage(engine, steps, id_column)


def run_export(fn: Callable[..., Any], *args: Any) -> Any:
    """Run an export (one file from a job's committed tables) in a worker, not in the driver."""
    import ray

    from egoray.executor import io_cpus

    with ray_errors():
        return ray.get(ray.remote(fn).options(num_cpus=io_cpus()).remote(*args))
