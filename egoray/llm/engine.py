"""LLM engines behind one interface: prompts in, ``n`` texts per prompt out.

- ``hf``: transformers ``generate``, batched with left padding (causal LMs) or as a seq2seq
  batch (T5 family); decoding constrained to a JSON schema by xgrammar's logits processor when
  the task asks for JSON. Runs on CPU or GPU; the default.
- ``vllm``: ``vllm.LLM`` (:mod:`egoray.llm.vllm_engine`), with the same prompts, per-request
  seeds and the same JSON schemas as vLLM structured outputs. GPU (the ``vllm`` extra) or CPU
  (``scripts/vllm_cpu_env.sh``).

A prompt is a string (sent as it is) or a list of chat messages (``{"role", "content"}``),
rendered by the model's own chat template. A sample that cannot be generated comes back as a
:class:`GenerationFailure` (``grammar_dead_end``, ``generation_error``) in place of its text, so
that one bad row is retried and rejected instead of failing its batch.

The engines are Ray-free; the Ray Data stage holds one in each actor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from egoray.config import ActorPool, StrictModel

log = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class GenerationFailure:
    """Why a sample has no text: ``grammar_dead_end`` or ``generation_error`` (with the exception)."""

    reason: str
    detail: str


def render_chat(tokenizer: Any, messages: list[dict[str, str]], model: str) -> str:
    """The prompt text of chat ``messages`` through the tokenizer's own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        from egoray.config import ConfigError

        raise ConfigError(f"prompts.chat is true but the model {model!r} has no chat template "
                          "(tokenizer_config.json chat_template); set prompts.chat: false and write the markup")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_chat_template(model: str) -> None:
    """Stop a job before it starts when its prompts are chat messages and ``model`` has no template."""
    from transformers import AutoTokenizer

    from egoray.models.tiny import resolve_model

    render_chat(AutoTokenizer.from_pretrained(resolve_model(model)), [{"role": "user", "content": "hi"}], model)


def sample_seeds(prompts: list[Prompt], params: GenerationParams, seeds: list[list[int]] | None) -> list[list[int]]:
    """Each prompt's sample seeds (default: one sample seeded by ``params.seed``), checked to give
    every prompt the same number of samples."""
    seeds = seeds if seeds is not None else [[params.seed] for _ in prompts]
    if len(seeds) != len(prompts) or any(len(s) != len(seeds[0]) for s in seeds):
        raise ValueError("seeds must give the same number of samples for every prompt")
    return seeds


def error_detail(exc: BaseException) -> str:
    """The exception's type, message and last frames (for the rejects table)."""
    import traceback

    frames = "".join(traceback.format_tb(exc.__traceback__)[-3:])
    return f"{type(exc).__name__}: {exc}\n{frames}"[:2000]

class GenerationParams(StrictModel):
    """Sampling parameters, the same for both engines."""

    max_new_tokens: int = Field(128, ge=1, le=8192)
    do_sample: bool = True
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeating tokens (CTRL's penalty)")
    seed: int = Field(0, description="base seed; each attempt and batch derives its own")


class EngineConfig(ActorPool):
    """Which engine and model, and how many actors with which resources run it."""

    kind: Literal["hf", "vllm"] = "hf"
    model: str = Field("tiny:llama", description="HF id, local dir, or a tiny:* preset built offline")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(1024, ge=16)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM engine arguments")
    kv_cache_gb: float | None = Field(None, gt=0, description="vLLM KV cache per engine (GiB); "
                                      "unset: vLLM's default share of GPU memory, or 1 GiB on CPU")


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
        self.model_name = model
        from egoray.llm.grammar import repair_tokenizer

        repair_tokenizer(self.tokenizer)
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
                       "float16": torch.float16}[dtype]
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        from egoray.llm.grammar import stop_token_ids

        self.stops = stop_token_ids(self.tokenizer, self.model.generation_config)
        self.max_prompt_tokens = max_prompt_tokens
        self.generated_tokens = 0  # new tokens produced so far (padding excluded)
        self._grammars: dict[str, Any] = {}
        self._compiler = None

    def _grammar(self, schema: dict[str, Any]):
        import xgrammar as xgr

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            if self._compiler is None:
                from egoray.llm.grammar import tokenizer_info

                vocab_size = self.model.get_output_embeddings().weight.shape[0]
                self._compiler = xgr.GrammarCompiler(tokenizer_info(self.tokenizer, vocab_size, self.stops))
            self._grammars[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def render(self, prompt: Prompt) -> str:
        """The text of a prompt: chat messages through the model's chat template."""
        return prompt if isinstance(prompt, str) else render_chat(self.tokenizer, prompt, self.model_name)

    def fits(self, prompt: Prompt) -> bool:
        """Whether ``prompt`` is within ``max_prompt_tokens`` (longer prompts lose their end)."""
        text = self.render(prompt)
        ids = self.tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        return len(ids) <= self.max_prompt_tokens

    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        schema: dict[str, Any] | None = None,
        seeds: list[list[int]] | None = None,
    ) -> list[list[str | GenerationFailure]]:
        """``len(seeds[i])`` completions of prompt ``i`` (prompt text excluded), in prompt order.

        With sampling, sample ``s`` of prompt ``i`` is drawn with its own generator seeded by
        ``seeds[i][s]`` (:mod:`egoray.models.sampling`): what a prompt gets does not depend on the
        other prompts of the batch. Without ``seeds``: one sample each, seeded by ``params.seed``.
        When the batch raises, each prompt is generated alone; a prompt that still raises gets a
        ``generation_error`` failure for each of its samples.
        """
        if not prompts:
            return []
        seeds = sample_seeds(prompts, params, seeds)
        n = len(seeds[0])
        try:
            return self._generate(prompts, params, schema, seeds)
        except Exception as exc:  # one bad prompt must not fail the others
            if len(prompts) == 1:
                log.warning("generation failed: %s", exc)
                return [[GenerationFailure("generation_error", error_detail(exc))] * n]
            return [self.generate([p], params, schema, [s])[0] for p, s in zip(prompts, seeds, strict=True)]

    def _generate(self, prompts: list[Prompt], params: GenerationParams, schema: dict[str, Any] | None,
                  seeds: list[list[int]]) -> list[list[str | GenerationFailure]]:
        import torch

        from egoray.models.sampling import sampling_kwargs

        n = len(seeds[0])
        expanded = [self.render(p) for p in prompts for _ in range(n)]
        enc = self.tokenizer(expanded, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_prompt_tokens, return_token_type_ids=False,
                             add_special_tokens=isinstance(prompts[0], str)).to(self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                                  "eos_token_id": self.stops}
        if params.repetition_penalty != 1.0:  # transformers applies it before our sampler
            kwargs["repetition_penalty"] = params.repetition_penalty
        sample = sampling_kwargs([s for row in seeds for s in row], params.do_sample, params.temperature,
                                 params.top_k, params.top_p)
        processors = list(sample.pop("logits_processor", []))
        grammar = None
        if schema is not None:
            from egoray.llm.grammar import GrammarProcessor

            grammar = GrammarProcessor(self._grammar(schema), self.stops)
            processors.insert(0, grammar)
        kwargs.update(sample)
        if processors:
            kwargs["logits_processor"] = processors
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        if not self.seq2seq:
            out = out[:, enc["input_ids"].shape[1]:]
        pad = self.tokenizer.pad_token_id
        self.generated_tokens += int((out != pad).sum()) if pad is not None else int(out.numel())
        texts: list[str | GenerationFailure] = list(self.tokenizer.batch_decode(out, skip_special_tokens=True))
        for i, why in enumerate(grammar.dead if grammar is not None else []):
            if why is not None:
                texts[i] = GenerationFailure("grammar_dead_end", f"{why}; output so far: {texts[i]!r}"[:2000])
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
