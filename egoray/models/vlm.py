"""BLIP-2 as a video narrator: VideoBLIP's frame-token concatenation and EILEV's in-context prompts.

A clip contributes N frames. Each frame goes through BLIP-2's vision tower on its own; the N
token sequences are concatenated into one ([N * patches, width]) before the Q-Former, whose
queries then attend over the whole clip at once (VideoBLIP). The Q-Former output, projected to
the language model's width, is the clip's "visual prompt".

EILEV prompts interleave k examples before the query, in EILEV's exact token layout
(:func:`interleave`): for each example its clip's query tokens, a newline and "<prompt>
<narration>."; then the query's clip and the prompt. Works for decoder-only (OPT) and
encoder-decoder (Flan-T5) language models: the interleaved sequence is the decoder-only model's
prefix or the encoder-decoder model's encoder input. Training (:mod:`egoray.models.video_blip`)
uses the same layout with the target appended.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from egoray.config import StrictModel, Url


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


NEWLINE = "\n"
_CAMERA_WEARER = re.compile(r"^#C\s+C", re.IGNORECASE)
_EOS_TAG = re.compile(r"<\|eos\|>$", re.IGNORECASE)
_UNSURE_END = re.compile(r"#unsure\.?$", re.IGNORECASE)
_UNSURE = re.compile(r"#unsure", re.IGNORECASE)


def clean_narration(text: str) -> str:
    """A narration as EILEV feeds it to the model: ``#C C`` → "The camera wearer", a trailing
    ``<|eos|>`` and ``#unsure`` dropped, an inner ``#unsure`` → "something", ending in punctuation
    (a period is added)."""
    cleaned = _EOS_TAG.sub("", text.strip()).strip()
    cleaned = _UNSURE_END.sub("", cleaned).strip()
    cleaned = _UNSURE.sub("something", cleaned)
    cleaned = _CAMERA_WEARER.sub("The camera wearer", cleaned)
    cleaned = " ".join(cleaned.split())
    if cleaned and cleaned[-1] not in string.punctuation:
        cleaned += "."
    return cleaned


@dataclass
class Interleaved:
    """One EILEV input: token ids with a placeholder where each clip's query tokens go
    (``video_mask`` 1), the loss labels (decoder-only: aligned with ``input_ids``, -100 off the
    target; encoder-decoder: the decoder's target ids) — as lists, batched by the caller."""

    input_ids: list[int]
    labels: list[int]
    video_mask: list[int]


def interleave(tokenizer: Any, decoder_only: bool, blocks: list[tuple[str, int]], target: str | None,
               num_query_tokens: int, layout: Literal["eilev", "videoblip"] = "eilev") -> Interleaved:
    """EILEV's token layout of ``blocks`` — (text, clips before it) — and an optional ``target``.

    Decoder-only (OPT): ``BOS``, then per block each clip's query tokens followed by ``"\n"`` and
    the block's text, a ``"\n"`` between blocks; the target follows the last block as
    ``" <target>\n</s>"``, the only tokens the loss sees. Encoder-decoder (T5): the same without
    BOS, the encoder input ends with ``</s>``, and the target is the decoder's ``"<target></s>"``.
    Texts are tokenized without special tokens, each with its following ``"\n"`` in one call (as
    EILEV's ``generate_input_ids_and_labels_from_interleaved``: a sentencepiece tokenizer such as
    Flan-T5's treats the newline as whitespace, so the two calls would differ); after a clip's
    placeholders (the pad token) comes the first id of ``"\n"``, EILEV's ``newline_token_id``.

    ``videoblip`` (VideoBLIP's ``train_v1``, one clip and one block): BLIP-2's own layout — the
    clip's query tokens first, then (OPT) BOS and the prompt, the target ``" <target></s>"``.
    """
    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    newline, eos = ids(NEWLINE)[:1], tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if layout == "videoblip":
        if [clips for _, clips in blocks] != [1]:
            raise ValueError("the videoblip layout has one clip and one prompt (no in-context examples)")
        head = [pad] * num_query_tokens + ([tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos]
                                           if decoder_only else [])
        tokens, video = head + ids(blocks[0][0]), [1] * num_query_tokens + [0] * (len(head) - num_query_tokens)
        video += [0] * (len(tokens) - len(video))
        if not decoder_only:
            return Interleaved(tokens + [eos], ids(target) + [eos] if target is not None else [], video + [0])
        answer = ids(" " + target) + [eos] if target is not None else []
        return Interleaved(tokens + answer, [-100] * len(tokens) + answer, video + [0] * len(answer))
    tokens: list[int] = []
    video: list[int] = []
    if decoder_only:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
        tokens, video = [bos], [0]
    for b, (text, clips) in enumerate(blocks):
        for _ in range(clips):
            tokens += [pad] * num_query_tokens + newline
            video += [1] * num_query_tokens + [0] * len(newline)
        body = ids(text + NEWLINE if b < len(blocks) - 1 else text)
        tokens += body
        video += [0] * len(body)
    if not decoder_only:
        tokens.append(eos)
        video.append(0)
        return Interleaved(tokens, ids(target) + [eos] if target is not None else [], video)
    labels = [-100] * len(tokens)
    if target is not None:
        answer = ids(" " + target + NEWLINE) + [eos]
        tokens += answer
        video += [0] * len(answer)
        labels += answer
    return Interleaved(tokens, labels, video)


def eilev_blocks(prompt: str, example_texts: list[str], example_prompts: list[str] | None = None
                 ) -> list[tuple[str, int]]:
    """One block per in-context example (its prompt and its cleaned narration after its clip),
    then the query's clip and prompt."""
    prompts = example_prompts or [prompt] * len(example_texts)
    return [(f"{p} {clean_narration(t)}", 1) for p, t in zip(prompts, example_texts, strict=True)] + [(prompt, 1)]


def embed_interleaved(model: Any, input_ids: Any, video_mask: Any, visual: Any) -> Any:
    """Input embeddings ``[batch, length, width]`` with the clips' visual prompts (``[clips, Q,
    width]``, in row then position order) at the placeholders."""
    embeds = model.get_input_embeddings()(input_ids)
    slots = video_mask.bool().unsqueeze(-1)
    if int(video_mask.sum()) != visual.shape[0] * visual.shape[1]:
        raise ValueError(f"{int(video_mask.sum())} clip slots for {visual.shape[0]} clips of {visual.shape[1]} tokens")
    return embeds.masked_scatter(slots, visual.to(embeds.dtype))


def pad_interleaved(items: list[Interleaved], pad_id: int, left: bool) -> dict[str, Any]:
    """Batch tensors ``input_ids``, ``attention_mask``, ``video_mask`` and ``labels`` (-100
    padded) of interleaved inputs: left padding for decoder-only generation (it continues at the
    right edge), right padding otherwise."""
    import torch

    longest = max(len(x.input_ids) for x in items)
    longest_labels = max(len(x.labels) for x in items)
    out = {"input_ids": torch.full((len(items), longest), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros(len(items), longest, dtype=torch.long),
           "video_mask": torch.zeros(len(items), longest, dtype=torch.long),
           "labels": torch.full((len(items), longest_labels), -100, dtype=torch.long)}
    for i, x in enumerate(items):
        n, m = len(x.input_ids), len(x.labels)
        cols = slice(longest - n, longest) if left else slice(0, n)
        out["input_ids"][i, cols] = torch.tensor(x.input_ids)
        out["attention_mask"][i, cols] = 1
        out["video_mask"][i, cols] = torch.tensor(x.video_mask)
        if m:
            out["labels"][i, slice(longest_labels - m, longest_labels) if left and m == n else slice(0, m)] = \
                torch.tensor(x.labels)
    return out


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


def point_window(t_start: float, t_end: float, length: float) -> tuple[float, float]:
    """A narration's clip: its own interval, or — narrated at a point (under 0.5 s) — ``length``
    seconds centred on it, shifted to start at 0 at the latest (EILEV's 8 s clips; the end is
    kept inside the video where its length is known, :func:`fit_window`)."""
    if t_end - t_start >= 0.5:
        return t_start, t_end
    start = max(0.0, (t_start + t_end) / 2 - length / 2)
    return start, start + length


def fit_window(t_start: float, t_end: float, duration: float | None) -> tuple[float, float]:
    """The window moved back inside a video of ``duration`` seconds, its length kept where it fits."""
    if duration is None or t_end <= duration:
        return t_start, t_end
    return max(0.0, duration - (t_end - t_start)), duration


UNLABELLED = ("", "[other]")  # Ego4D's catch-all verb is no label to match on


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class ExamplePool:
    """EILEV's choice of in-context examples from a pool of labelled clips (indexed once).

    ``verb_noun``: candidates sharing the query's verb (but not its noun) and candidates sharing
    its noun (but not its verb) are two buckets; ``floor(need * ratio)`` come from the verb bucket
    and the rest from the noun bucket, one bucket refilling the other when it runs dry; any
    shortfall is drawn at random from the pool without the query's own action; the order is
    shuffled. ``[other]`` and empty labels match nothing. ``random``: any other clip.
    """

    def __init__(self, pool: list[dict[str, Any]]) -> None:
        self.pool = pool
        self.by_verb: dict[str, list[int]] = {}
        self.by_noun: dict[str, list[int]] = {}
        for i, p in enumerate(pool):
            verb, noun = _label(p.get("verb")), _label(p.get("noun"))
            if verb not in UNLABELLED:
                self.by_verb.setdefault(verb, []).append(i)
            if noun:
                self.by_noun.setdefault(noun, []).append(i)

    @staticmethod
    def _key(item: dict[str, Any]) -> Any:
        return item["id"] if item.get("id") is not None else (item.get("video_uid"), item.get("t_start"),
                                                              item.get("t_end"))

    def choose(self, query: dict[str, Any], k: int, strategy: str, ratio: float, rng: np.random.Generator
               ) -> list[int]:
        """Indices of up to ``k`` pool clips for ``query`` (never the query's own clip)."""
        own = self._key(query)
        pool = self.pool
        if k == 0:
            return []

        def draw(n: int, ok: Any) -> list[int]:  # a random order of the whole pool, the first n that qualify
            found: list[int] = []
            for i in rng.permutation(len(pool)).tolist():
                if len(found) == n:
                    break
                if ok(i):
                    found.append(i)
            return found

        if strategy == "random":
            return draw(k, lambda i: self._key(pool[i]) != own)
        qv, qn = _label(query.get("verb")), _label(query.get("noun"))
        verbs = [i for i in self.by_verb.get(qv, []) if _label(pool[i].get("noun")) != qn
                 and self._key(pool[i]) != own] if qv not in UNLABELLED else []
        nouns = [i for i in self.by_noun.get(qn, []) if _label(pool[i].get("verb")) != qv
                 and self._key(pool[i]) != own] if qn else []
        chosen: list[int] = []
        need = k
        while need > 0 and (verbs or nouns):
            n_verb = int(need * ratio) if verbs and nouns else (need if verbs else 0)
            for bucket, n in ((verbs, n_verb), (nouns, need - n_verb)):
                picks = set(rng.permutation(len(bucket))[:n].tolist())
                chosen += [bucket[j] for j in sorted(picks)]
                bucket[:] = [x for j, x in enumerate(bucket) if j not in picks]
            need = k - len(chosen)
        if need > 0:
            taken = set(chosen)
            labelled = bool(qv or qn)
            chosen += draw(need, lambda i: i not in taken and self._key(pool[i]) != own and not (
                labelled and _label(pool[i].get("verb")) == qv and _label(pool[i].get("noun")) == qn))
        return [chosen[j] for j in rng.permutation(len(chosen))]


def choose_examples(query: dict[str, Any], pool: list[dict[str, Any]], k: int, strategy: str, ratio: float,
                    rng: np.random.Generator) -> list[int]:
    """:meth:`ExamplePool.choose` over a pool indexed for this one query."""
    return ExamplePool(pool).choose(query, k, strategy, ratio, rng)
