"""BLIP-2 as a video narrator: VideoBLIP's frame-token concatenation and EILEV's in-context prompts.

A clip contributes N frames. Each frame goes through BLIP-2's vision tower on its own; the N
token sequences are concatenated into one ([N * patches, width]) before the Q-Former, whose
queries then attend over the whole clip at once (VideoBLIP). The Q-Former output, projected to
the language model's width, is the clip's "visual prompt".

EILEV prompts interleave k examples before the query: for each example its visual prompt, then
"Question: What is the camera wearer doing? Answer: <narration>"; then the query clip's visual
prompt and the question with an empty answer. Works for decoder-only (OPT) and encoder-decoder
(Flan-T5) language models: the interleaved sequence is the decoder-only model's prefix or the
encoder-decoder model's encoder input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from egoray.config import StrictModel, Url


class InContext(StrictModel):
    """EILEV in-context examples, drawn from a pool of narrated clips."""

    k: int = Field(0, ge=0, le=32, description="examples per query (0: plain VideoBLIP prompting)")
    pool: Url | None = Field(None, description="table video_uid, t_start, t_end, text[, verb, noun][, path]")
    pool_splits: list[str] = Field(["train"], description="with a split column: only these splits' clips")
    strategy: Literal["random", "verb_noun"] = "random"
    verb_noun_ratio: float = Field(0.5, ge=0, le=1, description="verb_noun: share of examples with the same verb")
    seed: int = 0


class VLMOptions(StrictModel):
    """The VLM backend of ``narrate``."""

    model: str = Field("tiny:blip2", description="a BLIP-2-family model id or path (Salesforce/blip2-opt-2.7b, ...)")
    num_frames: int = Field(8, ge=1, le=64, description="frames per clip, uniformly subsampled")
    question: str = "Question: What is the camera wearer doing?"
    answer_prefix: str = "Answer:"
    in_context: InContext = InContext()
    n: int = Field(1, ge=1, description="narrations per clip")
    max_new_tokens: int = Field(30, ge=1)
    do_sample: bool = False
    top_p: float = Field(0.95, gt=0, le=1)
    temperature: float = Field(0.7, gt=0)
    num_beams: int = Field(1, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    frame_cache: int = Field(128, ge=0, description="decoded clips an actor keeps (in-context examples recur)")
    seed: int = 0


@dataclass
class LoadedVLM:
    model: Any
    tokenizer: Any
    image_processor: Any
    device: Any

    @property
    def decoder_only(self) -> bool:
        return bool(self.model.config.use_decoder_only_language_model)


def load_vlm(name: str, device: str = "cpu", dtype: str = "float32") -> LoadedVLM:
    import torch
    import transformers

    from egoray.models.tiny import resolve_model

    path = resolve_model(name)
    model = transformers.Blip2ForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
    model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    image_processor = transformers.BlipImageProcessor.from_pretrained(path)
    return LoadedVLM(model, tokenizer, image_processor, torch.device(device))


def pixel_values(vlm: LoadedVLM, clips: list[np.ndarray]) -> Any:
    """``[clips, frames, 3, H, W]`` model input from RGB uint8 frame stacks ``[frames, h, w, 3]``."""
    import torch

    frames = [f for clip in clips for f in clip]
    pv = vlm.image_processor(images=frames, return_tensors="pt")["pixel_values"]
    t = clips[0].shape[0]
    if any(c.shape[0] != t for c in clips):
        raise ValueError("every clip must have the same number of frames")
    return pv.reshape(len(clips), t, *pv.shape[1:]).to(vlm.device, dtype=next(vlm.model.parameters()).dtype) \
        if len(clips) else torch.zeros(0)


def clip_prompts(model: Any, pixels: Any) -> Any:
    """Visual prompts ``[clips, queries, lm width]`` of ``pixels`` ``[clips, frames, 3, H, W]``.

    Frames are encoded independently; their patch tokens are concatenated per clip (frame-major)
    before the Q-Former cross-attends to them.
    """
    import torch

    b, t = pixels.shape[:2]
    tokens = model.vision_model(pixel_values=pixels.flatten(0, 1)).last_hidden_state  # [b*t, patches, width]
    tokens = tokens.reshape(b, t * tokens.shape[1], tokens.shape[2])
    mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
    queries = model.query_tokens.expand(b, -1, -1)
    out = model.qformer(query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=mask)
    return model.language_projection(out.last_hidden_state)


def prompt_segments(question: str, answer_prefix: str, examples: list[str]) -> list[int | str]:
    """The interleaved prompt as segments: an int is a clip (example i, or -1 for the query)."""
    segments: list[int | str] = []
    for i, text in enumerate(examples):
        segments += [i, f"{question} {answer_prefix} {text.strip()}"]
    return segments + [-1, f"{question} {answer_prefix}"]


def embed_prompt(vlm: LoadedVLM, segments: list[int | str], examples: Any, query: Any) -> Any:
    """``[length, width]`` input embeddings of one interleaved prompt (``examples``: [k, Q, width])."""
    import torch

    embed = vlm.model.get_input_embeddings()
    parts = []
    first_text = True
    for seg in segments:
        if isinstance(seg, int):
            parts.append(query if seg < 0 else examples[seg])
            continue
        # decoder-only LMs start the text after the first visual prompt with BOS, as BLIP-2 does
        ids = vlm.tokenizer(seg, add_special_tokens=False)["input_ids"]
        if vlm.decoder_only and first_text and vlm.tokenizer.bos_token_id is not None:
            ids = [vlm.tokenizer.bos_token_id, *ids]
        first_text = False
        parts.append(embed(torch.tensor(ids, dtype=torch.long, device=vlm.device)))
    return torch.cat(parts, dim=0)


def pad_batch(vlm: LoadedVLM, sequences: list[Any]) -> tuple[Any, Any]:
    """Stack prompts of different lengths: left padding for decoder-only LMs (generation continues
    at the right edge), right padding for encoder-decoder ones."""
    import torch

    width = sequences[0].shape[-1]
    longest = max(s.shape[0] for s in sequences)
    pad_id = vlm.tokenizer.pad_token_id or 0
    pad = vlm.model.get_input_embeddings()(torch.tensor([pad_id], device=vlm.device))[0]
    embeds = pad.expand(len(sequences), longest, width).clone()
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=vlm.device)
    for i, s in enumerate(sequences):
        n = s.shape[0]
        if vlm.decoder_only:
            embeds[i, longest - n:] = s
            mask[i, longest - n:] = 1
        else:
            embeds[i, :n] = s
            mask[i, :n] = 1
    return embeds, mask


def generate(vlm: LoadedVLM, options: VLMOptions, prompts: list[Any], seeds: list[list[int]] | None = None
             ) -> tuple[list[list[str]], list[list[float]]]:
    """``options.n`` narrations per prompt and each one's mean token NLL under the unmodified model.

    With sampling, narration ``s`` of prompt ``i`` is drawn with its own generator seeded by
    ``seeds[i][s]`` (:mod:`egoray.models.sampling`): independent of the other prompts of the batch.
    """
    import torch

    from egoray.models.sampling import sampling_kwargs

    n = options.n
    seeds = seeds if seeds is not None else [[options.seed + i * n + s for s in range(n)] for i in range(len(prompts))]
    embeds, mask = pad_batch(vlm, prompts)
    if options.do_sample:  # one row per (prompt, sample), each with its own generator
        embeds, mask = embeds.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        decoding: dict[str, Any] = {"num_return_sequences": 1,
                                    **sampling_kwargs([x for row in seeds for x in row], True, options.temperature,
                                                      0, options.top_p)}
    else:
        decoding = {"do_sample": False, "num_beams": options.num_beams, "num_return_sequences": n}
    with torch.no_grad():
        out = vlm.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=options.max_new_tokens,
            output_logits=True, return_dict_in_generate=True,
            pad_token_id=vlm.tokenizer.pad_token_id, eos_token_id=vlm.tokenizer.eos_token_id, **decoding)
    steps = len(out.logits)
    new = out.sequences[:, -steps:]  # encoder-decoder outputs start with the decoder start token
    logits = torch.stack(out.logits, dim=1).float()  # [rows, steps, vocab], before sampling warpers
    logp = torch.log_softmax(logits, dim=-1).gather(2, new[..., None]).squeeze(-1)
    eos = vlm.tokenizer.eos_token_id
    texts, nlls = [], []
    for row in range(new.shape[0]):
        ids = new[row].tolist()
        end = ids.index(eos) if eos in ids else len(ids)
        texts.append(vlm.tokenizer.decode(ids[:end], skip_special_tokens=True).strip())
        nlls.append(float(-logp[row, :max(1, end)].mean()))  # an immediate EOS scores the EOS itself
    return [texts[i:i + n] for i in range(0, len(texts), n)], [nlls[i:i + n] for i in range(0, len(nlls), n)]


def choose_examples(query: dict[str, Any], pool: list[dict[str, Any]], k: int, strategy: str, ratio: float,
                    rng: np.random.Generator) -> list[int]:
    """Indices of ``k`` pool examples for ``query`` (never the query's own clip).

    ``verb_noun`` (EILEV): round(k * ratio) examples share the query's verb and the rest its noun,
    each drawn at random; any shortfall (rare actions, unlabelled queries) is filled at random.
    """
    own = (query.get("video_uid"), query.get("t_start"), query.get("t_end"))
    candidates = [i for i, p in enumerate(pool) if (p.get("video_uid"), p.get("t_start"), p.get("t_end")) != own]
    if k == 0 or not candidates:
        return []
    chosen: list[int] = []
    if strategy == "verb_noun" and query.get("verb") is not None:
        n_verb = round(k * ratio)
        for key, n in (("verb", n_verb), ("noun", k - n_verb)):
            same = [i for i in candidates if pool[i].get(key) == query.get(key) and i not in chosen]
            chosen += [same[j] for j in rng.permutation(len(same))[:n]]
    rest = [i for i in candidates if i not in chosen]
    chosen += [rest[j] for j in rng.permutation(len(rest))[:k - len(chosen)]]
    return chosen[:k]
