"""JSON-schema-constrained decoding for the ``hf`` engine that survives real tokenizers.

Two things broke on a real instruct model and are handled here:

- **How the vocabulary spells text.** xgrammar reads it from the tokenizer's pipeline (decoder,
  pre-tokenizer). A checkpoint whose tokenizer class brings the wrong pipeline — a byte-level BPE
  vocabulary (``Ġ`` for a space) loaded by a sentencepiece class (``Metaspace`` + ``ByteFallback``),
  as some converted checkpoints are — was read as byte-fallback, so every token the grammar
  allowed was spelled wrong and the grammar ran out of tokens. :func:`vocab_kind` decides from the
  vocabulary itself first (all 256 ``<0xNN>`` tokens: byte fallback; every byte of GPT-2's byte
  alphabet a token: byte level), then from the pipeline; :func:`repair_tokenizer` gives such a
  tokenizer the byte-level pipeline its vocabulary needs.
- **A dead end is a row's failure, not the batch's.** :class:`GrammarProcessor` tracks one
  grammar per row; a row whose grammar refuses the sampled token, or allows no token at all, is
  ended (its remaining tokens forced to a stop token) and reported as ``grammar_dead_end`` instead
  of raising inside ``generate`` (xgrammar's own processor asserts, which aborted the whole job).

Stop tokens are every end token the model's generation config names (Llama-3 style lists too).
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def _byte_alphabet() -> set[str]:
    """GPT-2's printable spelling of the 256 bytes (the alphabet of byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return set(chars)


BYTE_ALPHABET = _byte_alphabet()


def _components(node: Any, key: str) -> list[dict[str, Any]]:
    """A pipeline part and, for a ``Sequence``, its members (flattened)."""
    if not isinstance(node, dict):
        return []
    inner = node.get(key)
    if node.get("type") == "Sequence" and isinstance(inner, list):
        return [c for part in inner for c in _components(part, key)]
    return [node]


def vocab_kind(tokenizer: Any) -> tuple[str, bool]:
    """``(kind, add_prefix_space)``: kind is ``byte_level``, ``byte_fallback`` or ``raw``."""
    vocab = tokenizer.get_vocab()
    if all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return "byte_fallback", True
    if BYTE_ALPHABET <= vocab.keys():
        return "byte_level", False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "raw", False
    spec = json.loads(backend.to_str())
    parts = _components(spec.get("decoder"), "decoders") + _components(spec.get("pre_tokenizer"), "pretokenizers")
    types = {p.get("type") for p in parts}
    if "ByteLevel" in types:
        return "byte_level", False
    metaspace = "Metaspace" in types or any(p.get("type") == "Replace" for p in parts)
    if "ByteFallback" in types or (spec.get("model") or {}).get("byte_fallback"):
        return "byte_fallback", True
    return "raw", metaspace


def pipeline_kind(tokenizer: Any) -> str | None:
    """What the tokenizer's own decoder says (``None`` for slow tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    types = {p.get("type") for p in _components(json.loads(backend.to_str()).get("decoder"), "decoders")}
    return "byte_level" if "ByteLevel" in types else "byte_fallback" if "ByteFallback" in types else "raw"


def repair_tokenizer(tokenizer: Any) -> bool:
    """Give a byte-level vocabulary the byte-level pipeline when the tokenizer brought another one;
    whether it did. (Encoding with a ``Metaspace`` pipeline spells a space ``▁``, a token such a
    vocabulary does not have, and decoding leaves ``Ġ`` in the text.)"""
    if vocab_kind(tokenizer)[0] != "byte_level" or pipeline_kind(tokenizer) in (None, "byte_level"):
        return False
    from tokenizers import decoders, normalizers, pre_tokenizers

    backend = tokenizer.backend_tokenizer
    log.warning("tokenizer %s has a byte-level vocabulary but a %s pipeline; using the byte-level one",
                type(tokenizer).__name__, pipeline_kind(tokenizer))
    backend.normalizer = normalizers.Sequence([])
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return True


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every end token: the tokenizer's eos and each eos id of the generation config."""
    ids: list[int] = []
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in value if isinstance(value, list | tuple) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the model names no end-of-sequence token (tokenizer eos_token or generation_config)")
    return ids


def tokenizer_info(tokenizer: Any, vocab_size: int, stops: list[int]) -> Any:
    """xgrammar's tokenizer info with the vocabulary kind of :func:`vocab_kind`."""
    import xgrammar as xgr

    kind, prefix_space = vocab_kind(tokenizer)
    encoded = [""] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        if i < vocab_size:
            encoded[i] = token
    vocab_type = {"byte_level": xgr.VocabType.BYTE_LEVEL, "byte_fallback": xgr.VocabType.BYTE_FALLBACK,
                  "raw": xgr.VocabType.RAW}[kind]
    return xgr.TokenizerInfo(encoded, vocab_type=vocab_type, vocab_size=vocab_size, stop_token_ids=stops,
                             add_prefix_space=prefix_space)


class GrammarProcessor:
    """A transformers logits processor: one grammar matcher per row, dead ends reported per row.

    ``dead[i]`` holds why row ``i`` was ended (``None`` while it is fine). Use one per ``generate``.
    """

    def __init__(self, compiled: Any, stops: list[int]) -> None:
        self.compiled, self.stops = compiled, stops
        self.matchers: list[Any] = []
        self.dead: list[str | None] = []
        self.bitmask = None
        self.steps = 0  # tokens generated so far

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch
        import xgrammar as xgr

        rows = input_ids.shape[0]
        if not self.matchers:
            self.matchers = [xgr.GrammarMatcher(self.compiled) for _ in range(rows)]
            self.dead = [None] * rows
            self.bitmask = xgr.allocate_token_bitmask(rows, self.compiled.tokenizer_info.vocab_size)
        if self.steps:
            for i, matcher in enumerate(self.matchers):
                if self.dead[i] is None and not matcher.is_terminated():
                    token = int(input_ids[i, -1])
                    if not matcher.accept_token(token):
                        self.dead[i] = f"the grammar refused token {token} after {self.steps} tokens"
        self.steps += 1
        live = [i for i, m in enumerate(self.matchers) if self.dead[i] is None and not m.is_terminated()]
        for i in live:
            self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
        device = scores.device
        scores = scores.float().cpu() if device.type != "cuda" else scores.float()
        masked = scores.clone()
        if live:
            xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), indices=live)
        for i in live:
            if not torch.isfinite(masked[i]).any():
                self.dead[i] = f"no token allowed after {self.steps - 1} tokens"
        for i in range(rows):  # ended rows (dead or finished): only a stop token
            if i not in live or self.dead[i] is not None:
                masked[i] = -float("inf")
                masked[i, self.stops[0]] = 0.0
        return masked.to(device)
