"""LLM generation as a stage: one model per actor, a sequence of validated steps per item.

A :class:`Step` says how one item becomes a prompt, how the outputs are validated and which
columns a valid output fills. :class:`LLMStage` runs its steps in order over a batch with one
engine per actor for the whole job (``hf`` or ``vllm``, :mod:`egoray.llm.engine`): every step
generates for the rows still usable, validates, and regenerates the failures with the next
attempt's seeds, up to ``max_attempts``; rows still failing are marked with the step's name and
the reason, their raw output kept for the rejects table. A sample the engine could not generate
(``grammar_dead_end``, ``generation_error``) fails its row's attempt like an invalid output,
with that reason. Seeds come from (step seed, step name, item id, sample, attempt) —
:func:`egoray.models.sampling.row_seed` — so an item's outputs do not depend on its batch, its
actor or an earlier interrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from egoray.llm.engine import EngineConfig, GenerationFailure, GenerationParams, Prompt, check_chat_template
from egoray.llm.schemas import Parsed
from egoray.models.sampling import row_seed
from egoray.stages.base import Resources, Stage, mark, pending


class Step:
    """One validated generation per item; subclasses fill in the three methods and ``fields``."""

    name: ClassVar[str] = "generate"
    fields: ClassVar[list[pa.Field]] = []  # the columns a valid output fills

    def __init__(self, params: GenerationParams, schema: dict[str, Any] | None = None, n: int = 1,
                 max_attempts: int = 1) -> None:
        self.params, self.schema, self.n, self.max_attempts = params, schema, n, max_attempts

    def prompt(self, row: dict[str, Any]) -> Prompt:
        """A string, or chat messages for the model's chat template."""
        raise NotImplementedError

    def fit_prompt(self, row: dict[str, Any], fits: Callable[[Prompt], bool]) -> Prompt:
        """The prompt, shortened where the step knows how until ``fits`` accepts it (by default
        as it is: the engine cuts what is left over)."""
        return self.prompt(row)

    def validate(self, row: dict[str, Any], outputs: list[str]) -> Parsed:
        raise NotImplementedError

    def columns(self, row: dict[str, Any], value: Any) -> dict[str, Any]:
        """The values of :attr:`fields` for a valid output (``value`` is what validate returned)."""
        raise NotImplementedError

    def reject_input(self, row: dict[str, Any], outputs: list[str], attempts: int) -> str:
        """What the rejects table keeps of a failed item (its raw output above all)."""
        return json.dumps({"prompt": str(self.prompt(row))[-2000:], "raw_output": outputs, "attempts": attempts},
                          ensure_ascii=False)[:8000]

    def seeds(self, item: str, attempt: int) -> list[int]:
        return [row_seed(self.params.seed, self.name, item, s, attempt) for s in range(self.n)]


class LLMStage(Stage):
    """Runs ``steps`` with one HF model per actor (see the module docstring)."""

    name = "generate"

    def __init__(self, engine: EngineConfig, steps: list[Step], id_column: str,
                 resources: Resources | None = None) -> None:
        super().__init__(resources or engine.resources(engine.batch_size))
        self.engine_config, self.steps, self.id_column = engine, steps, id_column
        self.engine: Any = None

    def setup(self) -> None:
        c = self.engine_config
        if c.kind == "vllm":
            from egoray.llm.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(c.model, c.dtype, c.max_prompt_tokens,
                                     max(s.params.max_new_tokens for s in self.steps), c.gpus_per_actor,
                                     c.kv_cache_gb, c.engine_kwargs)
        else:
            from egoray.llm.engine import HFEngine

            self.engine = HFEngine(c.model, c.dtype, max_prompt_tokens=c.max_prompt_tokens)

    def process(self, rows: pa.Table) -> pa.Table:
        for step in self.steps:
            rows = self.run_step(step, rows)
        return rows

    def generate(self, step: Step, prompts: list[Prompt], seeds: list[list[int]]) -> list[list[str | GenerationFailure]]:
        return self.engine.generate(prompts, step.params, step.schema, seeds)

    def units(self) -> dict[str, int]:
        tokens, self.engine.generated_tokens = self.engine.generated_tokens, 0
        return {"tokens_generated": tokens} if tokens else {}

    def run_step(self, step: Step, rows: pa.Table) -> pa.Table:
        todo = [int(i) for i in np.flatnonzero(pending(rows))]
        records = rows.to_pylist()
        prompts = {i: step.fit_prompt(records[i], self.engine.fits) for i in todo}
        outputs: dict[int, list[str]] = {}
        results: dict[int, Parsed] = {}
        attempts: dict[int, int] = {}
        for attempt in range(step.max_attempts):
            if not todo:
                break
            seeds = [step.seeds(str(records[i][self.id_column]), attempt) for i in todo]
            for i, outs in zip(todo, self.generate(step, [prompts[i] for i in todo], seeds), strict=True):
                failure = next((o for o in outs if isinstance(o, GenerationFailure)), None)
                outputs[i], attempts[i] = [o if isinstance(o, str) else "" for o in outs], attempt + 1
                results[i] = (Parsed(reason=failure.reason, detail=failure.detail) if failure is not None
                              else step.validate(records[i], outputs[i]))
            todo = [i for i in todo if not results[i].ok]
        values: dict[str, list[Any]] = {f.name: [None] * rows.num_rows for f in step.fields}
        tries = [0] * rows.num_rows
        for i, parsed in results.items():
            tries[i] = attempts[i]
            if parsed.ok:
                for name, value in step.columns(records[i], parsed.value).items():
                    values[name][i] = value
        for f in step.fields:
            rows = rows.append_column(f, pa.array(values[f.name], f.type))
        rows = rows.append_column(f"attempts_{step.name}", pa.array(tries, pa.int16()))
        failed = {i for i, p in results.items() if not p.ok}
        if failed:
            mask = np.zeros(rows.num_rows, dtype=bool)
            mask[sorted(failed)] = True
            reasons = [results[i].reason if i in failed else "" for i in range(rows.num_rows)]
            details = [results[i].detail if i in failed else "" for i in range(rows.num_rows)]
            inputs = [step.reject_input(records[i], outputs[i], attempts[i]) if i in failed else None
                      for i in range(rows.num_rows)]
            rows = mark(rows, mask, step.name, reasons, details, inputs)
        return rows


def llm_stage(engine: EngineConfig, steps: list[Step], id_column: str) -> Stage:
    """The LLM stage of a job: one engine (``hf`` or ``vllm``) per actor of one pool, for every
    step and retry. A chat prompt needs the model's chat template: checked here, before any actor
    loads the model."""
    if any(getattr(getattr(step, "prompts", None), "chat", False) for step in steps):
        check_chat_template(engine.model)
    return LLMStage(engine, steps, id_column)
