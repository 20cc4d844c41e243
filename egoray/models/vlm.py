"""BLIP-2 as a video narrator: VideoBLIP's frame-token concatenation and EILEV's in-context prompts.

A clip contributes N frames. Each frame goes through BLIP-2's vision tower on its own; the N
token sequences are concatenated into one ([N * patches, width]) before the Q-Former, whose
queries then attend over the whole clip at once (VideoBLIP). The Q-Former output, projected to
the language model's width, is the clip's "visual prompt".

EILEV prompts interleave k examples before the query, in EILEV's exact token layout
(:func:`egoray.models.interleave.interleave`): for each example its clip's query tokens, a newline and "<prompt>
<narration>."; then the query's clip and the prompt. Works for decoder-only (OPT) and
encoder-decoder (Flan-T5) language models: the interleaved sequence is the decoder-only model's
prefix or the encoder-decoder model's encoder input. Training (:mod:`egoray.models.video_blip`)
uses the same layout with the target appended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from egoray.config import StrictModel, Url
from egoray.models.interleave import NEWLINE, eilev_blocks, embed_interleaved, interleave, pad_interleaved


class InContext(StrictModel):
    """EILEV in-context examples, drawn from a pool of narrated clips."""

    k: int = Field(0, ge=0, le=32, description="examples per query (0: plain VideoBLIP prompting)")
    pool: Url | None = Field(None, description="table video_uid, t_start, t_end, text[, verb, noun][, path]")
    pool_splits: list[str] = Field(["train"], description="with a split column: only these splits' clips")
    strategy: Literal["random", "verb_noun"] = "random"
    verb_noun_ratio: float = Field(0.5, ge=0, le=1, description="verb_noun: share of examples with the same verb")
    point_window_sec: float = Field(8.0, gt=0, description="an example narrated at a point: this long a clip "
                                                         "around it (EILEV's 8 s), inside the video")
    seed: int = 0


class VLMOptions(StrictModel):
    """The VLM backend of ``narrate``."""

    model: str = Field("tiny:blip2", description="a BLIP-2-family model id or path (Salesforce/blip2-opt-2.7b, ...)")
    num_frames: int = Field(8, ge=1, le=64, description="frames per clip, uniformly subsampled")
    layout: Literal["eilev", "videoblip"] = Field(
        "eilev", description="the token layout the model was trained with: eilev (EILEV checkpoints, BLIP-2) or "
                             "videoblip (kpyu/video-blip-*, train_vlm mode videoblip; no in-context examples)")
    question: str = "Question: What is the camera wearer doing?"
    answer_prefix: str = "Answer:"
    in_context: InContext = InContext()
    n: int = Field(1, ge=1, description="narrations per clip")
    max_new_tokens: int = Field(30, ge=1)
    do_sample: bool = False
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut (not transformers' default of 50)")
    temperature: float = Field(0.7, gt=0)
    num_beams: int = Field(1, ge=1)
    length_penalty: float = Field(1.0, description="beam search: >0 favours longer narrations (EILEV's sample: -1)")
    stop_at_newline: bool = Field(True, description="decoder-only LMs also stop at a newline, as BLIP-2's OPT does")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    frame_cache: int = Field(128, ge=0, description="decoded clips an actor keeps (in-context examples recur)")
    seed: int = 0

    @model_validator(mode="after")
    def _examples_need_eilev(self) -> VLMOptions:
        if self.layout == "videoblip" and self.in_context.k:
            raise ValueError("in-context examples need layout: eilev (videoblip models see one clip)")
        return self


@dataclass
class LoadedVLM:
    model: Any
    tokenizer: Any
    image_processor: Any
    device: Any

    @property
    def decoder_only(self) -> bool:
        return bool(self.model.config.use_decoder_only_language_model)


def is_trained_vlm(name: str) -> bool:
    """Whether ``name`` is a ``train_vlm`` output (or its ``best/``): an egoray export, not a model id."""
    from egoray import storage
    from egoray.models.checkpoint import MODEL_FILE

    if name.startswith("tiny:"):
        return False
    return any(storage.exists(u) for u in (storage.join(name, "model", MODEL_FILE), storage.join(name, MODEL_FILE)))


def load_vlm(name: str, device: str = "cpu", dtype: str = "float32") -> LoadedVLM:
    """A BLIP-2-family model: a model id or path, or a ``train_vlm`` output — its base model with
    the trained Q-Former, query tokens and projection."""
    import torch
    import transformers

    from egoray.models.tiny import resolve_model

    trained = None
    if is_trained_vlm(name):
        from egoray.models.checkpoint import load_exported_kind

        trained = load_exported_kind(name, "vlm", "a train_vlm model")
        name = trained["config"]["base"]
    path = resolve_model(name)
    model = transformers.Blip2ForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
    if trained is not None:
        model.load_state_dict(trained["state_dict"], strict=False)
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
    import contextlib

    import torch

    b, t = pixels.shape[:2]
    frozen = not any(p.requires_grad for p in model.vision_model.parameters())
    with torch.no_grad() if frozen else contextlib.nullcontext():  # a frozen tower keeps no activations
        tokens = model.vision_model(pixel_values=pixels.flatten(0, 1)).last_hidden_state  # [b*t, patches, width]
    tokens = tokens.reshape(b, t * tokens.shape[1], tokens.shape[2])
    mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
    queries = model.query_tokens.expand(b, -1, -1)
    out = model.qformer(query_embeds=queries, encoder_hidden_states=tokens, encoder_attention_mask=mask)
    return model.language_projection(out.last_hidden_state)


def query_inputs(vlm: LoadedVLM, prompt: str, example_texts: list[list[str]], visual: Any, num_query_tokens: int,
                 layout: Literal["eilev", "videoblip"] = "eilev") -> tuple[Any, Any]:
    """Inputs embeddings and attention mask of a batch of queries, each after its examples
    (``visual``: every row's example clips then its query clip, ``[clips, Q, width]``)."""
    items = [interleave(vlm.tokenizer, vlm.decoder_only, eilev_blocks(prompt, texts), None, num_query_tokens, layout)
             for texts in example_texts]
    pad = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id is not None else 0
    batch = {k: v.to(vlm.device) for k, v in pad_interleaved(items, pad, left=vlm.decoder_only).items()}
    embeds = embed_interleaved(vlm.model, batch["input_ids"], batch["video_mask"], visual)
    return embeds, batch["attention_mask"]


def stop_ids(vlm: LoadedVLM, at_newline: bool) -> list[int]:
    """Token ids that end a narration: EOS, and for decoder-only LMs ``"\n"`` too (BLIP-2's OPT
    models end their answers with a newline, which EILEV's targets teach)."""
    ids = [vlm.tokenizer.eos_token_id]
    if at_newline and vlm.decoder_only:
        ids += vlm.tokenizer(NEWLINE, add_special_tokens=False)["input_ids"][-1:]
    return ids


def generate(vlm: LoadedVLM, options: VLMOptions, embeds: Any, mask: Any, seeds: list[list[int]] | None = None
             ) -> tuple[list[list[str]], list[list[float]]]:
    """``options.n`` narrations per prompt and each one's mean token NLL under the unmodified model.

    With sampling, narration ``s`` of prompt ``i`` is drawn with its own generator seeded by
    ``seeds[i][s]`` (:mod:`egoray.models.sampling`; no top-k unless asked): independent of the
    other prompts of the batch. Every returned narration is rescored teacher-forced, so its NLL
    belongs to it whatever the decoding (beam search reorders its beams at every step).
    """
    import torch

    from egoray.models.sampling import sampling_kwargs

    n = options.n
    rows = embeds.shape[0]
    seeds = seeds if seeds is not None else [[options.seed + i * n + s for s in range(n)] for i in range(rows)]
    each_embeds, each_mask = embeds.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
    if options.do_sample:  # one row per (prompt, sample), each with its own generator
        inputs = {"inputs_embeds": each_embeds, "attention_mask": each_mask}
        decoding: dict[str, Any] = {"num_return_sequences": 1,
                                    **sampling_kwargs([x for row in seeds for x in row], True, options.temperature,
                                                      options.top_k, options.top_p)}
    else:
        inputs = {"inputs_embeds": embeds, "attention_mask": mask}
        decoding = {"do_sample": False, "num_beams": options.num_beams, "num_return_sequences": n,
                    **({"length_penalty": options.length_penalty} if options.num_beams > 1 else {})}
    stops = stop_ids(vlm, options.stop_at_newline)
    with torch.no_grad():
        out = vlm.model.language_model.generate(
            **inputs, max_new_tokens=options.max_new_tokens, return_dict_in_generate=True,
            pad_token_id=vlm.tokenizer.pad_token_id, eos_token_id=stops, **decoding)
    # a decoder-only LM given only embeddings returns only the new tokens; T5 starts with its start token
    new = out.sequences if vlm.decoder_only else out.sequences[:, 1:]
    ends, texts = [], []
    for row in range(new.shape[0]):
        ids = new[row].tolist()
        end = next((j for j, t in enumerate(ids) if t in stops), len(ids))
        ends.append(end)
        texts.append(vlm.tokenizer.decode(ids[:end], skip_special_tokens=True).strip())
    nlls = sequence_nll(vlm, each_embeds, each_mask, new, ends)
    return [texts[i:i + n] for i in range(0, len(texts), n)], [nlls[i:i + n] for i in range(0, len(nlls), n)]


def sequence_nll(vlm: LoadedVLM, embeds: Any, mask: Any, tokens: Any, ends: list[int]) -> list[float]:
    """Mean NLL of each row's tokens up to and including its stop token (``ends[r]``; an immediate
    stop scores the stop itself), teacher-forced after the row's prompt."""
    import torch

    rows, steps = tokens.shape
    keep = torch.zeros(rows, steps, dtype=torch.long, device=tokens.device)
    for r, end in enumerate(ends):
        keep[r, :min(steps, end + 1)] = 1
    pad = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id is not None else 0
    safe = torch.where(keep.bool(), tokens, torch.full_like(tokens, pad))
    lm = vlm.model.language_model
    with torch.no_grad():
        if vlm.decoder_only:
            full = torch.cat([embeds, lm.get_input_embeddings()(safe).to(embeds.dtype)], dim=1)
            logits = lm(inputs_embeds=full, attention_mask=torch.cat([mask, keep], dim=1)).logits
            logits = logits[:, embeds.shape[1] - 1:-1]
        else:
            start = lm.config.decoder_start_token_id
            decoder_in = torch.cat([torch.full((rows, 1), start, dtype=torch.long, device=tokens.device),
                                    safe[:, :-1]], dim=1)
            logits = lm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_in).logits
    logp = torch.log_softmax(logits.float(), dim=-1).gather(2, safe[..., None]).squeeze(-1)
    return [float(-(logp[r] * keep[r]).sum() / keep[r].sum().clamp(min=1)) for r in range(rows)]
