"""The ``vllm`` engine: one ``vllm.LLM`` per actor, with :class:`~egoray.llm.engine.HFEngine`'s interface.

Why not ``ray.data.llm``: its processors are one vLLM engine pool per processor, and an LLM job
is several steps (question, then wrong answers) each retried up to ``max_attempts`` times, so
expressing them as processors starts one engine pool per attempt per step, all alive at once in
one streaming plan (qa: 6 pools; on the real config 24 GPUs for a 4-GPU job), and gathering a
row's ``n`` samples needs a ``groupby`` over the whole dataset. Holding ``vllm.LLM`` in the same
actor as the ``hf`` engine keeps one engine per actor for the whole job — every step, sample and
retry — with the same prompts, per-request seeds, validation and rejects.

Prompts are tokenized here (chat messages through the model's chat template) and sent as token
ids, cut to ``max_prompt_tokens`` as the ``hf`` engine cuts them, so both engines see the same
tokens. JSON schemas become vLLM structured outputs (``guidance`` backend by default: xgrammar
0.2.8 lets raw control characters through ``maxLength`` strings). A request that raises is
retried alone, and fails alone (``generation_error``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from egoray.llm.engine import GenerationFailure, GenerationParams, Prompt, error_detail, render_chat, sample_seeds

log = logging.getLogger(__name__)

CPU_KV_CACHE_GB = 1.0  # vLLM on CPU takes ~92% of RAM for its KV cache unless told otherwise


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def engine_kwargs(model_path: str, dtype: str, max_model_len: int, gpus: float, kv_cache_gb: float | None,
                  on_gpu: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments of an engine config (``extra`` wins)."""
    kwargs: dict[str, Any] = {
        "model": model_path, "dtype": dtype, "max_model_len": max_model_len, "seed": 0,
        "enable_prefix_caching": True,  # the few-shot prompts share their long start
        "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
        "disable_log_stats": True,
    }
    if gpus > 1:
        kwargs["tensor_parallel_size"] = int(gpus)
    cache = kv_cache_gb if kv_cache_gb is not None else (None if on_gpu else CPU_KV_CACHE_GB)
    if cache is not None:
        kwargs["kv_cache_memory_bytes"] = int(cache * 2**30)
    kwargs.update(extra)
    return kwargs


def _context_length(path: str) -> int | None:
    """The model's context length from its config (``max_position_embeddings``), if it says."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    except Exception:  # vLLM will say what is wrong with the model
        return None
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


class VLLMEngine:
    """A ``vllm.LLM`` and its tokenizer, loaded once, generating in batches."""

    def __init__(self, model: str, dtype: str = "auto", max_prompt_tokens: int = 1024, max_new_tokens: int = 512,
                 gpus: float = 0, kv_cache_gb: float | None = None, extra: dict[str, Any] | None = None) -> None:
        if not vllm_available():
            raise RuntimeError("engine.kind=vllm needs vLLM: pip install 'egoray[vllm]' on a GPU machine, "
                               "or build the CPU environment with scripts/vllm_cpu_env.sh")
        import torch

        from egoray.models.tiny import resolve_model

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        from vllm import LLM

        self.model_name = model
        path = resolve_model(model)
        limit = _context_length(path)
        if limit is not None and max_prompt_tokens + max_new_tokens > limit:
            # vLLM refuses a max_model_len over the model's context; prompts get what is left
            log.warning("max_prompt_tokens %d + max_new_tokens %d exceed %s's context of %d tokens: prompts are cut "
                        "to %d tokens", max_prompt_tokens, max_new_tokens, model, limit, limit - max_new_tokens)
            max_prompt_tokens = max(1, limit - max_new_tokens)
        kwargs = engine_kwargs(path, dtype, max_prompt_tokens + max_new_tokens, gpus, kv_cache_gb, on_gpu, extra or {})
        log.info("starting vLLM: %s", {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_prompt_tokens = max_prompt_tokens
        self.generated_tokens = 0

    def render(self, prompt: Prompt) -> str:
        return prompt if isinstance(prompt, str) else render_chat(self.tokenizer, prompt, self.model_name)

    def _ids(self, prompt: Prompt) -> list[int]:
        return list(self.tokenizer(self.render(prompt), add_special_tokens=isinstance(prompt, str))["input_ids"])

    def fits(self, prompt: Prompt) -> bool:
        return len(self._ids(prompt)) <= self.max_prompt_tokens

    def _sampling(self, params: GenerationParams, schema: dict[str, Any] | None, seed: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kwargs: dict[str, Any] = {"n": 1, "max_tokens": params.max_new_tokens, "seed": seed % 2**63,
                                  "temperature": params.temperature if params.do_sample else 0.0,
                                  "top_p": params.top_p if params.do_sample else 1.0,
                                  "repetition_penalty": params.repetition_penalty, "skip_special_tokens": True}
        if params.do_sample and params.top_k:
            kwargs["top_k"] = params.top_k
        if schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(json=json.dumps(schema))
        return SamplingParams(**kwargs)

    def generate(self, prompts: list[Prompt], params: GenerationParams, schema: dict[str, Any] | None = None,
                 seeds: list[list[int]] | None = None) -> list[list[str | GenerationFailure]]:
        """``len(seeds[i])`` completions of prompt ``i``; sample ``s`` is the request seeded by ``seeds[i][s]``."""
        if not prompts:
            return []
        seeds = sample_seeds(prompts, params, seeds)
        n = len(seeds[0])
        requests, sampling, owners = [], [], []
        out: list[list[str | GenerationFailure]] = [[""] * n for _ in prompts]
        for i, prompt in enumerate(prompts):
            try:
                ids = self._ids(prompt)[:self.max_prompt_tokens]
            except Exception as exc:  # a template that cannot render this prompt
                out[i] = [GenerationFailure("generation_error", error_detail(exc))] * n
                continue
            for s, seed in enumerate(seeds[i]):
                requests.append({"prompt_token_ids": ids})
                sampling.append(self._sampling(params, schema, seed))
                owners.append((i, s))
        for (i, s), text in zip(owners, self._run(requests, sampling), strict=True):
            out[i][s] = text
        return out

    def _run(self, requests: list[dict[str, Any]], sampling: list[Any]) -> list[str | GenerationFailure]:
        if not requests:
            return []
        try:
            results = self.llm.generate(requests, sampling_params=sampling, use_tqdm=False)
        except Exception as exc:
            if len(requests) == 1:
                log.warning("vLLM request failed: %s", exc)
                return [GenerationFailure("generation_error", error_detail(exc))]
            return [t for r, p in zip(requests, sampling, strict=True) for t in self._run([r], [p])]
        texts: list[str | GenerationFailure] = []
        for result in results:
            completion = result.outputs[0]
            self.generated_tokens += len(completion.token_ids)
            texts.append(completion.text)
        return texts
