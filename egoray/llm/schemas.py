"""Structured outputs: the JSON schemas we constrain decoding to, and strict validation.

The same schema goes to both engines (xgrammar in the HF engine, vLLM's structured outputs), and
every output is validated again here whatever the engine promised: model output is parsed with
``json`` only, never ``eval``/``literal_eval``, and a failure has a machine-readable reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# One word: letters (accented Latin ones too: café, Müller), digits, apostrophes, hyphens, dots and
# slashes (e.g., 1/2, w/o); at most 15 characters, an optional comma after.
_WORD = r"[A-Za-z0-9\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F'\-./]{1,15},?"


def words_pattern(max_words: int, end: str = "") -> str:
    """Regex for 1..max_words single-space-separated words, optionally ending with ``end``."""
    return f"^{_WORD}( {_WORD}){{0,{max_words - 1}}}{re.escape(end)}$"


def qa_schema(max_question_words: int = 10, max_answer_words: int = 5) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "question": {"type": "string", "pattern": words_pattern(max_question_words, "?")},
            "answer": {"type": "string", "pattern": words_pattern(max_answer_words)},
        },
        "required": ["question", "answer"],
        "additionalProperties": False,
    }


def wrong_answers_schema(n: int = 3, max_answer_words: int = 5) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "wrong_answers": {
                "type": "array",
                "items": {"type": "string", "pattern": words_pattern(max_answer_words)},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["wrong_answers"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Parsed:
    """A validated value, or the reason it is unusable."""

    value: Any = None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def as_text(raw: str | bytes | None) -> Parsed:
    """Model output as text; bytes that are not UTF-8 are a failure, not a crash."""
    if raw is None:
        return Parsed(reason="empty_output", detail="no output")
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            return Parsed(reason="not_utf8", detail=str(e))
    if not raw.strip():
        return Parsed(reason="empty_output", detail="output is blank")
    return Parsed(value=raw)


def extract_json_object(text: str) -> Parsed:
    """The first complete JSON object in ``text`` (prose before or after it is tolerated)."""
    decoder = json.JSONDecoder()
    saw_brace = False
    for match in re.finditer(r"\{", text):
        saw_brace = True
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return Parsed(value=obj)
    if saw_brace:
        return Parsed(reason="invalid_json", detail="no complete JSON object (truncated or malformed)")
    return Parsed(reason="no_json", detail="no JSON object in the output")


def _json_object(raw: str | bytes | None) -> Parsed:
    """The first JSON object in a generation (its bytes decoded first), or why there is none."""
    text = as_text(raw)
    return extract_json_object(text.value) if text.ok else text


def _words(s: str) -> int:
    return len(s.split())


def _clean(s: str) -> str:
    return " ".join(s.split())


def validate_qa(raw: str | bytes | None, max_question_words: int = 10, max_answer_words: int = 5) -> Parsed:
    """``{"question": str, "answer": str}`` within the word limits → (question, answer)."""
    found = _json_object(raw)
    if not found.ok:
        return found
    obj = found.value
    for key in ("question", "answer"):
        if key not in obj:
            return Parsed(reason="missing_field", detail=f"no {key!r}")
        if not isinstance(obj[key], str):
            return Parsed(reason="wrong_type", detail=f"{key!r} is {type(obj[key]).__name__}, not a string")
    question, answer = _clean(obj["question"]), _clean(obj["answer"])
    if not question or not answer:
        return Parsed(reason="empty_field", detail="question or answer is empty")
    if _words(question) > max_question_words:
        return Parsed(reason="too_long", detail=f"question has {_words(question)} words > {max_question_words}")
    if _words(answer) > max_answer_words:
        return Parsed(reason="too_long", detail=f"answer has {_words(answer)} words > {max_answer_words}")
    return Parsed(value=(question, answer))


def validate_wrong_answers(
    raw: str | bytes | None, answer: str, n: int = 3, max_answer_words: int = 5
) -> Parsed:
    """``{"wrong_answers": [n strings]}``: distinct from each other and from the answer."""
    found = _json_object(raw)
    if not found.ok:
        return found
    items = found.value.get("wrong_answers")
    if items is None:
        return Parsed(reason="missing_field", detail="no 'wrong_answers'")
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        return Parsed(reason="wrong_type", detail="'wrong_answers' is not a list of strings")
    items = [_clean(x) for x in items]
    if len(items) != n:
        return Parsed(reason="wrong_count", detail=f"{len(items)} wrong answers, expected {n}")
    if any(not x for x in items):
        return Parsed(reason="empty_field", detail="a wrong answer is empty")
    if any(_words(x) > max_answer_words for x in items):
        return Parsed(reason="too_long", detail=f"a wrong answer has more than {max_answer_words} words")
    keys = [_key(x) for x in items]
    if len(set(keys)) != n:
        return Parsed(reason="duplicate_wrong_answers", detail="wrong answers repeat each other")
    if _key(answer) in keys:
        return Parsed(reason="wrong_equals_answer", detail="a wrong answer equals the correct answer")
    return Parsed(value=items)


def _key(s: str) -> str:
    """Comparison key: case, punctuation and surrounding articles do not make answers distinct."""
    s = re.sub(r"[^\w\s]", "", s.lower()).strip()
    s = re.sub(r"^(a|an|the)\s+", "", s)
    return " ".join(s.split())


def _literal(raw: str | bytes | None) -> Parsed:
    """The whole output as a Python literal, as GroundVQA's generators read it (``literal_eval``:
    single quotes pass, any text around the literal fails)."""
    import ast

    text = as_text(raw)
    if not text.ok:
        return text
    try:
        return Parsed(value=ast.literal_eval(text.value))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        return Parsed(reason="not_a_literal", detail=f"{type(e).__name__}: {e}"[:300])


def accept_qa_as_groundvqa(raw: str | bytes | None) -> Parsed:
    """GroundVQA's open-QA acceptance: the output is a literal whose ``question`` and ``answer``
    can be read (its keys ``Q``/``A``, renamed as in egoray's prompts); no word limits, any value
    kept as its ``str``."""
    found = _literal(raw)
    if not found.ok:
        return found
    try:
        return Parsed(value=(str(found.value["question"]), str(found.value["answer"])))
    except (KeyError, TypeError, IndexError) as e:
        return Parsed(reason="missing_field", detail=f"{type(e).__name__}: {e}"[:300])


def accept_wrong_answers_as_groundvqa(raw: str | bytes | None, n: int = 3) -> Parsed:
    """GroundVQA's close-QA acceptance: a literal list of ``n`` (or, with egoray's prompt, a
    ``wrong_answers`` list of ``n``); items are not checked against each other or the answer."""
    found = _literal(raw)
    if not found.ok:
        return found
    items = found.value.get("wrong_answers") if isinstance(found.value, dict) else found.value
    if not isinstance(items, list) or len(items) != n:
        return Parsed(reason="wrong_count", detail=f"not a list of {n}: {str(found.value)[:200]}")
    return Parsed(value=[str(x) for x in items])
