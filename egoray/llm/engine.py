"""LLM engines behind one interface: prompts in, ``n`` texts per prompt out.

- ``hf``: transformers ``generate``, batched with left padding (causal LMs) or as a seq2seq
  batch (T5 family); decoding constrained to a JSON schema by xgrammar's logits processor when
  the task asks for JSON. Runs on CPU or GPU; the default.
- ``vllm``: vLLM through ``ray.data.llm`` (see :mod:`egoray.llm.stage`), with the same prompts
  and the same JSON schemas as vLLM structured outputs. Needs the ``vllm`` extra and GPUs.

:class:`HFEngine` is Ray-free; the Ray Data stage wraps it in an actor.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from egoray.config import StrictModel


class GenerationParams(StrictModel):
    """Sampling parameters, the same for both engines."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    do_sample: bool = True
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeating tokens (CTRL's penalty)")
    seed: int = Field(0, description="base seed; each attempt and batch derives its own")


class EngineConfig(StrictModel):
    """Which engine and model, and how many actors with which resources run it."""

    kind: Literal["hf", "vllm"] = "hf"
    model: str = Field("tiny:llama", description="HF id, local dir, or a tiny:* preset built offline")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1)
    num_actors: int = Field(1, ge=1, description="actor pool size")
    gpus_per_actor: float = Field(0, ge=0)
    cpus_per_actor: float = Field(1, gt=0)
    max_prompt_tokens: int = Field(1024, ge=16)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine arguments")


class HFEngine:
    """A transformers model and tokenizer, loaded once, generating in batches."""

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, max_prompt_tokens: int = 1024):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from egoray.models.tiny import resolve_model

        path = resolve_model(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = AutoConfig.from_pretrained(path)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        self.max_prompt_tokens = max_prompt_tokens
        self.generated_tokens = 0  # new tokens produced so far (padding excluded)
        self._grammars: dict[str, Any] = {}
        self._compiler = None

    def _grammar(self, schema: dict[str, Any]):
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
                self._compiler = xgr.GrammarCompiler(info)
            self._grammars[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def fits(self, prompt: str) -> bool:
        """Whether ``prompt`` is within ``max_prompt_tokens`` (longer prompts lose their end)."""
        return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"]) <= self.max_prompt_tokens

    def generate(
        self,
        prompts: list[str],
        params: GenerationParams,
        schema: dict[str, Any] | None = None,
        seeds: list[list[int]] | None = None,
    ) -> list[list[str]]:
        """``len(seeds[i])`` completions of prompt ``i`` (prompt text excluded), in prompt order.

        With sampling, sample ``s`` of prompt ``i`` is drawn with its own generator seeded by
        ``seeds[i][s]`` (:mod:`egoray.models.sampling`): what a prompt gets does not depend on the
        other prompts of the batch. Without ``seeds``: one sample each, seeded by ``params.seed``.
        """
        import torch

        from egoray.models.sampling import sampling_kwargs

        if not prompts:
            return []
        seeds = seeds if seeds is not None else [[params.seed] for _ in prompts]
        n = len(seeds[0])
        if any(len(s) != n for s in seeds) or len(seeds) != len(prompts):
            raise ValueError("seeds must give the same number of samples for every prompt")
        expanded = [p for p in prompts for _ in range(n)]
        enc = self.tokenizer(expanded, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_prompt_tokens, return_token_type_ids=False).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if params.repetition_penalty != 1.0:  # transformers applies it before our sampler
            kwargs["repetition_penalty"] = params.repetition_penalty
        sample = sampling_kwargs([s for row in seeds for s in row], params.do_sample, params.temperature,
                                 params.top_k, params.top_p)
        processors = list(sample.pop("logits_processor", []))
        if schema is not None:
            import xgrammar as xgr

            processors.insert(0, xgr.contrib.hf.LogitsProcessor(self._grammar(schema)))
        kwargs.update(sample)
        if processors:
            kwargs["logits_processor"] = processors
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        if not self.seq2seq:
            out = out[:, enc["input_ids"].shape[1]:]
        pad = self.tokenizer.pad_token_id
        self.generated_tokens += int((out != pad).sum()) if pad is not None else int(out.numel())
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
