"""Narration text clean-up: Ego4D tags to words, whitespace and trailing dots.

Vectorised over Arrow string arrays (RE2 regexes in pyarrow.compute): a million narrations
take well under a second. Tags are replaced only as whole tokens: ``#C``, ``#O``, ``#unsure``
and a bare ``C``/``O`` standing alone; letters inside words ("Coca-Cola", "OCR", "C-clamp")
are never touched, unlike the reference clean-up that deleted every capital C and O.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from egoray.config import StrictModel

_CW = "\x01"  # placeholders, resolved to capitalised or lower-case words at the end
_OTHER = "\x02"
# "#O", "#O man X", "#O the woman A": the tag with its anonymised descriptor and letter id.
_O_TAG = (
    r"#[Oo]\b(\s+([Tt]he|[Aa]n?))?"
    r"(\s+(man|woman|person|lady|boy|girl|child|kid|guy|people|persons))?(\s+[A-Z]\b)?"
)
_BEFORE = r"(^|[\s(\"'\[,;:])"  # what may stand before a bare token
_AFTER = r"([\s,.;:!?)\"'\]]|$)"  # what may stand after it


class TagWords(StrictModel):
    """What the Ego4D tags become."""

    camera_wearer: str = Field("The camera wearer", min_length=1, description="#C, #C C and a bare C")
    other: str = Field("another person", min_length=1, description="#O and a bare O")
    unsure: str = Field("something", description="#unsure")
    bare_letters: bool = Field(True, description="also replace a standalone C / O token")


def normalise(texts: pa.Array | pa.ChunkedArray | list[str | None], words: TagWords | None = None) -> pa.Array:
    """Normalise narration texts; nulls stay null."""
    words = words or TagWords()
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())
    sub = pc.replace_substring_regex

    arr = sub(arr, r"(?i)#unsure\b", _escape(words.unsure))
    arr = sub(arr, r"(?i)#c\s+c\b", _CW)
    arr = sub(arr, r"(?i)#c\b", _CW)
    arr = sub(arr, _O_TAG, _OTHER)
    if words.bare_letters:
        for _ in range(2):  # twice: RE2 matches don't overlap, so "C C" needs a second pass
            arr = sub(arr, _BEFORE + "C" + _AFTER, r"\1" + _CW + r"\2")
            arr = sub(arr, _BEFORE + "O" + _AFTER, r"\1" + _OTHER + r"\2")
    arr = sub(arr, r"\s+", " ")
    arr = sub(arr, r"^[\s.]+|[\s.]+$", "")  # stray leading/trailing dots and spaces
    for token, word in ((_CW, words.camera_wearer), (_OTHER, words.other)):
        arr = sub(arr, "^" + token, _escape(_capitalise(word)))
        arr = sub(arr, token, _escape(_lower_first(word)))
    arr = sub(arr, r"\s+", " ")
    return pc.utf8_trim_whitespace(arr)


def normalise_distinct(
    texts: pa.Array | pa.ChunkedArray, words: TagWords | None = None
) -> tuple[pa.Array, pa.Array]:
    """(:func:`normalise`, :func:`word_counts` of the result), computed once per distinct text:
    narrations repeat a lot ("#C C walks around"), and a hash lookup is far cheaper than a
    dozen regex passes."""
    encoded = pc.dictionary_encode(texts)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    if len(encoded.dictionary) >= 0.8 * len(encoded):
        cleaned = normalise(texts, words)
        return cleaned, word_counts(cleaned)
    cleaned = normalise(encoded.dictionary, words)
    counts = word_counts(cleaned)
    return pc.take(cleaned, encoded.indices), pc.fill_null(pc.take(counts, encoded.indices), 0)


def normalise_one(text: str, words: TagWords | None = None) -> str:
    """Scalar convenience over :func:`normalise` (same code path)."""
    return normalise([text], words)[0].as_py()


def word_counts(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Whitespace-separated word count per text (0 for null)."""
    trimmed = pc.utf8_trim_whitespace(texts)
    counts = pc.list_value_length(pc.utf8_split_whitespace(trimmed))
    counts = pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), 0, counts)
    return pc.fill_null(counts, 0)


def _capitalise(word: str) -> str:
    return word[:1].upper() + word[1:]


def _lower_first(word: str) -> str:
    # "The camera wearer" → "the camera wearer", but keep acronyms ("GPT ...") as they are.
    if len(word) > 1 and word[1].isupper():
        return word
    return word[:1].lower() + word[1:]


def _escape(replacement: str) -> str:
    """Escape backslashes so RE2 reads a replacement literally."""
    return replacement.replace("\\", "\\\\")
