"""The ``vllm`` engine: the steps of an :class:`~egoray.stages.generate.LLMStage` on ``ray.data.llm``.

``ray.data.llm`` brings its own Ray Data operators (a vLLM engine per GPU actor, continuous
batching), so this stage applies itself to the dataset instead of being one ``map_batches``.
Each attempt of each step is one processor over every row: rows already valid (or rejected by an
earlier step) ask for one token of a blank prompt and are ignored; the others get the step's
prompt with vLLM's per-request seed from (step seed, step name, item id, sample, attempt) and
the step's JSON schema as structured output. A step with ``n`` samples sends ``n`` requests per
item and gathers them back by item id. After the last attempt, rows still failing are marked
with the step's name and reason, as the ``hf`` engine does.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from egoray.llm.engine import EngineConfig, GenerationParams
from egoray.stages.base import REASON, Resources, Stage, mark, with_reject_columns
from egoray.stages.generate import Step


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def vllm_processor_config(engine: EngineConfig, params: GenerationParams) -> Any:
    """The ``ray.data.llm`` processor config for an engine config (raw prompts, no chat template)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from egoray.models.tiny import resolve_model

    return vLLMEngineProcessorConfig(
        model_source=resolve_model(engine.model),
        batch_size=engine.batch_size,
        concurrency=engine.num_actors,
        engine_kwargs={"dtype": engine.dtype, "max_model_len": engine.max_prompt_tokens + params.max_new_tokens,
                       **({"tensor_parallel_size": int(engine.gpus_per_actor)} if engine.gpus_per_actor > 1 else {}),
                       **engine.engine_kwargs},
        chat_template_stage=False,
        tokenize_stage=True,
        detokenize_stage=True,
    )


_VLLM_COLUMNS = {"prompt", "sampling_params", "generated_text", "generated_tokens", "num_generated_tokens",
                 "num_input_tokens", "tokenized_prompt", "metrics", "request_id", "params", "time_taken_llm",
                 "embeddings", "__inference_error__"}


class VLLMStage(Stage):
    """The steps of an LLM stage on vLLM (see the module docstring)."""

    name = "generate"

    def __init__(self, engine: EngineConfig, steps: list[Step], id_column: str) -> None:
        super().__init__(Resources(cpus=engine.cpus_per_actor, gpus=engine.gpus_per_actor, actors=engine.num_actors,
                                   batch_size=engine.batch_size))
        self.engine, self.steps, self.id_column = engine, steps, id_column

    def process(self, rows: pa.Table) -> pa.Table:  # never called: the stage brings its own operators
        raise RuntimeError("VLLMStage runs through apply_to_dataset")

    def apply_to_dataset(self, ds: Any) -> Any:
        if not vllm_available():
            raise RuntimeError("engine.kind=vllm needs the vllm extra (pip install 'egoray[vllm]') and a GPU")
        ds = ds.map_batches(with_reject_columns, batch_format="pyarrow")
        for step in self.steps:
            for attempt in range(step.max_attempts):
                ds = self._attempt(ds, step, attempt)
            ds = ds.map_batches(_Finish(step, self.id_column), batch_format="pyarrow")
        return ds

    def _attempt(self, ds: Any, step: Step, attempt: int) -> Any:
        from ray.data.llm import build_processor

        key, n, params = self.id_column, step.n, step.params
        schema = json.dumps(step.schema) if step.schema else None
        done_col = f"_ok_{step.name}"

        def expand(row: dict) -> list[dict]:
            skip = row.get(REASON) is not None or bool(row.get(done_col))
            return [{**row, "_skip": skip, "_sample": s} for s in range(1 if skip else n)]

        def preprocess(row: dict) -> dict:
            sampling: dict[str, Any] = {"max_tokens": 1 if row["_skip"] else params.max_new_tokens,
                                        "temperature": params.temperature if params.do_sample else 0.0,
                                        "top_p": params.top_p,
                                        "seed": step.seeds(str(row[key]), attempt)[row["_sample"]] % 2**31}
            if params.top_k:
                sampling["top_k"] = params.top_k
            if params.repetition_penalty != 1.0:
                sampling["repetition_penalty"] = params.repetition_penalty
            if schema and not row["_skip"]:
                sampling["structured_outputs"] = {"json": schema}
            return {**row, "prompt": " " if row["_skip"] else step.prompt(row), "sampling_params": sampling}

        def postprocess(row: dict) -> dict:
            keep = {k: v for k, v in row.items() if k not in _VLLM_COLUMNS}
            return {**keep, "_text": row.get("generated_text") or ""}

        ds = ds.flat_map(expand)
        ds = build_processor(vllm_processor_config(self.engine, params), preprocess=preprocess,
                             postprocess=postprocess)(ds)
        validate = _Validate(step, attempt, key)
        if n == 1:
            return ds.map_batches(validate, batch_format="pyarrow")
        return ds.groupby(key).map_groups(validate, batch_format="pyarrow")


class _Validate:
    """Validates one attempt's outputs per item (the rows of one item arrive together)."""

    def __init__(self, step: Step, attempt: int, id_column: str) -> None:
        self.step, self.attempt, self.id_column = step, attempt, id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        step = self.step
        ok_col, out_col, tries_col = f"_ok_{step.name}", f"_out_{step.name}", f"_tries_{step.name}"
        by_item: dict[Any, list[dict]] = {}
        for row in batch.to_pylist():
            by_item.setdefault(row[self.id_column], []).append(row)
        out = []
        for items in by_item.values():
            group = sorted(items, key=lambda r: r["_sample"])
            row = {k: v for k, v in group[0].items() if k not in ("_skip", "_sample", "_text")}
            if not group[0]["_skip"]:
                texts = [r["_text"] for r in group]
                parsed = step.validate(row, texts)
                row[ok_col] = parsed.ok
                row[out_col] = json.dumps({"outputs": texts, "value": parsed.value if parsed.ok else None,
                                           "reason": parsed.reason, "detail": parsed.detail})
                row[tries_col] = self.attempt + 1
            out.append(row)
        return pa.Table.from_pylist(out)


class _Finish:
    """After a step's last attempt: fill its columns for valid items, mark the others rejected."""

    def __init__(self, step: Step, id_column: str) -> None:
        self.step, self.id_column = step, id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        step = self.step
        ok_col, out_col, tries_col = f"_ok_{step.name}", f"_out_{step.name}", f"_tries_{step.name}"
        rows = batch.to_pylist()
        values: dict[str, list[Any]] = {f.name: [None] * len(rows) for f in step.fields}
        failed = np.zeros(len(rows), dtype=bool)
        reasons, details, inputs = [""] * len(rows), [""] * len(rows), [None] * len(rows)
        for i, row in enumerate(rows):
            if row.get(out_col) is None:
                continue
            result = json.loads(row[out_col])
            if row.get(ok_col):
                for name, value in step.columns(row, result["value"]).items():
                    values[name][i] = value
            else:
                failed[i] = True
                reasons[i], details[i] = result["reason"], result["detail"]
                inputs[i] = step.reject_input(row, result["outputs"], int(row.get(tries_col) or 0))
        tries = [int(r.get(tries_col) or 0) for r in rows]
        batch = batch.drop_columns([c for c in (ok_col, out_col, tries_col) if c in batch.column_names])
        for f in step.fields:
            batch = batch.append_column(f, pa.array(values[f.name], f.type))
        batch = batch.append_column(f"attempts_{step.name}", pa.array(tries, pa.int16()))
        return mark(batch, failed, step.name, reasons, details, inputs)
