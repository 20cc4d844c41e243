"""EILEV's input layout: narrations cleaned as EILEV feeds them, the interleaving of in-context
examples' clips and texts with the query's (:func:`interleave`), and the batching and embedding
of those sequences. Inference (:mod:`egoray.models.vlm`) and training
(:mod:`egoray.models.video_blip`) share it, so the model is trained on the layout it narrates with.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Literal

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
