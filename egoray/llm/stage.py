"""The generation stage on Ray Data: rows with a prompt in, one row per sample out.

``generate(ds, engine, params, prompt_col, out_col, schema, n)`` appends ``out_col`` (the text)
and ``sample`` (0..n-1) to every row, for either engine:

- ``hf``: ``map_batches`` over an actor pool of :class:`HFGenerateActor` (pool size, batch size,
  CPUs/GPUs per actor from the engine config);
- ``vllm``: a ``ray.data.llm`` vLLM engine processor with the schema as structured outputs;
  ``n`` samples are ``n`` copies of the row with their own seeds.

Rows whose prompt is empty pass through with an empty output, so callers can mix rows that need
no generation into a batch.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import pyarrow as pa

from egoray.llm.engine import EngineConfig, GenerationParams, HFEngine
from egoray.metrics import job_for_metrics


class HFGenerateActor:
    """Ray Data callable class: loads the model once per actor, generates per batch.

    With a ``validate`` function it also retries, inside the actor, the rows whose outputs fail
    validation (up to ``max_attempts`` generations per row) and reports the attempts used in
    ``_attempts``: retries then cost no new actor pool.
    """

    def __init__(self, engine: dict, params: dict, prompt_col: str, out_col: str,
                 schema: str | None, n: int, validate: Any = None, max_attempts: int = 1,
                 metrics_job: str | None = None) -> None:
        import torch

        cfg = EngineConfig(**engine)
        torch.set_num_threads(max(1, int(cfg.cpus_per_actor)))
        self.engine = HFEngine(cfg.model, cfg.dtype, max_prompt_tokens=cfg.max_prompt_tokens)
        self.params = GenerationParams(**params)
        self.prompt_col, self.out_col = prompt_col, out_col
        self.schema = json.loads(schema) if schema else None
        self.n = n
        self.validate = validate
        self.max_attempts = max_attempts if validate is not None else 1
        self.calls = 0
        self.metrics_job = metrics_job

    def _generate(self, prompts: list[str]) -> list[list[str]]:
        # A distinct seed per batch and call: retries of the same prompt sample differently.
        seed = self.params.seed + 7919 * self.calls + zlib.crc32("\x1f".join(prompts).encode()) % 100_003
        self.calls += 1
        return self.engine.generate(prompts, self.params, self.schema, self.n, seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = batch[self.prompt_col].to_pylist()
        rows = batch.to_pylist() if self.validate is not None else None
        todo = [i for i, p in enumerate(prompts) if p]
        by_row = dict(zip(todo, self._generate([prompts[i] for i in todo]), strict=True))
        attempts = {i: 1 for i in todo}
        for _ in range(self.max_attempts - 1):
            todo = [i for i in todo if not self.validate(rows[i], by_row[i]).ok]
            if not todo:
                break
            for i, out in zip(todo, self._generate([prompts[i] for i in todo]), strict=True):
                by_row[i] = out
                attempts[i] += 1
        if self.metrics_job and self.engine.generated_tokens:
            from egoray.metrics import add_async

            add_async(self.metrics_job, {"tokens_generated": self.engine.generated_tokens})
            self.engine.generated_tokens = 0
        out = explode(batch, [by_row.get(i, [""] * self.n) for i in range(len(prompts))], self.out_col)
        used = [attempts.get(i, 0) for i in range(len(prompts)) for _ in range(self.n)]
        return out.append_column("_attempts", pa.array(used, pa.int16()))


def explode(batch: pa.Table, outputs: list[list[str]], out_col: str) -> pa.Table:
    """One row per (input row, sample): input columns repeated, plus ``sample`` and ``out_col``."""
    n = len(outputs[0]) if outputs else 1
    index = [i for i in range(batch.num_rows) for _ in range(n)]
    out = batch.take(pa.array(index, pa.int64()))
    out = out.append_column("sample", pa.array([s for _ in range(batch.num_rows) for s in range(n)], pa.int32()))
    return out.append_column(out_col, pa.array([t for o in outputs for t in o], pa.string()))


def generate(
    ds: Any,
    engine: EngineConfig,
    params: GenerationParams,
    prompt_col: str,
    out_col: str,
    schema: dict[str, Any] | None = None,
    n: int = 1,
    attempt: int = 0,
    validate: Any = None,
    max_attempts: int = 1,
) -> Any:
    """Add generated text to a Ray Dataset (see the module docstring).

    ``_attempts`` tells how many generations each row used: the HF engine retries rows failing
    ``validate`` inside its actors; vLLM makes one attempt per call (the caller loops).
    """
    if attempt:
        params = params.model_copy(update={"seed": params.seed + 1_000_003 * attempt})
    if engine.kind == "vllm":
        return _vllm(ds, engine, params, prompt_col, out_col, schema, n)
    return ds.map_batches(
        HFGenerateActor,
        fn_constructor_kwargs={
            "engine": engine.model_dump(), "params": params.model_dump(), "prompt_col": prompt_col,
            "out_col": out_col, "schema": json.dumps(schema) if schema else None, "n": n,
            "validate": validate, "max_attempts": max_attempts, "metrics_job": job_for_metrics(),
        },
        batch_size=engine.batch_size,
        batch_format="pyarrow",
        concurrency=engine.num_actors,
        num_cpus=engine.cpus_per_actor,
        num_gpus=engine.gpus_per_actor or None,
    )


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def _vllm(ds: Any, engine: EngineConfig, params: GenerationParams, prompt_col: str, out_col: str,
          schema: dict[str, Any] | None, n: int) -> Any:
    if not vllm_available():
        raise RuntimeError("engine.kind=vllm needs the vllm extra (pip install 'egoray[vllm]') and a GPU")
    from ray.data.llm import build_processor

    if n > 1:
        ds = ds.flat_map(lambda row: [{**row, "sample": s} for s in range(n)])
    else:
        ds = ds.map(lambda row: {**row, "sample": 0})
    schema_json = json.dumps(schema) if schema else None

    def preprocess(row: dict) -> dict:
        sampling = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_p": params.top_p,
            "seed": params.seed + int(row["sample"]),
        }
        if params.top_k:
            sampling["top_k"] = params.top_k
        if schema_json:
            sampling["structured_outputs"] = {"json": schema_json}
        return {**row, "prompt": row[prompt_col] or " ", "sampling_params": sampling}

    def postprocess(row: dict) -> dict:
        text = row.get("generated_text") or ""
        keep = {k: v for k, v in row.items() if k not in _VLLM_COLUMNS}
        return {**keep, out_col: text if row[prompt_col] else "", "_attempts": 1 if row[prompt_col] else 0}

    return build_processor(vllm_processor_config(engine, params), preprocess=preprocess,
                           postprocess=postprocess)(ds)


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
