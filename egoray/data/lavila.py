"""LaViLa's metadata pickles, in and out.

LaViLa keeps Ego4D narrations as pickled lists of tuples:

- ``ego4d_train.pkl`` / ``ego4d_val.pkl``: ``(video_uid, start_sec, end_sec, narration)``, a string
  (a person's narration, ``#C C ...`` style);
- the rephraser's output: the same with a list ``[original, paraphrase_1, ...]``;
- the narrator's output (``total.pkl``): ``(video_uid, start, end, [narrations], [scores])``.

:func:`read_lavila_pickle` turns each text into a RAW row for ``ingest`` (through the restricted
unpickler: nothing foreign is constructed); a tuple of another shape, or a record holding a
foreign class, is a reject with its reason, and the usual validation rejects end-before-start and
empty texts. :func:`lavila_style` writes our clean texts back in LaViLa's ``#C C`` style for the
pickles we export.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import pyarrow as pa

from egoray.data.em_pkl import foreign_in
from egoray.data.raw import InputError, RawRows
from egoray.data.safe_pickle import safe_load

HUMAN, REPHRASED, NARRATOR = "lavila", "lavila_rephraser", "lavila_narrator"


def is_lavila_pickle(records: Any) -> bool:
    """Whether an unpickled object is a LaViLa metadata list (tuples, not Ego4D's clip dicts)."""
    return isinstance(records, list) and bool(records) and isinstance(records[0], tuple | list)


def read_lavila_pickle(data: bytes, name: str = "ego4d_train.pkl", records: Any = None) -> pa.Table:
    """RAW rows, one per text: ids ``<video_uid>:<row>`` for a narration, ``<video_uid>:<row>#<k>``
    for the k-th text of a list (rephraser: k = 0 is the original; narrator: k-th sample)."""
    records = safe_load(data, name, numpy_arrays=True) if records is None else records
    if not isinstance(records, list):
        raise InputError(f"{name}: expected a list of (video_uid, start, end, narration) tuples, "
                         f"found {type(records).__name__}")
    rows = RawRows()
    for i, record in enumerate(records):
        uid = record[0] if isinstance(record, tuple | list) and record and isinstance(record[0], str) else None
        base = f"{uid or 'record'}:{i}"
        foreign = foreign_in(record)
        shape = _shape_problem(record)
        if foreign or shape:
            rows.add(base, uid, HUMAN, None, None, None, issue="unknown_pickle_class" if foreign else "bad_record",
                     issue_detail=f"holds {foreign}" if foreign else shape)
            continue
        start, end = _number(record[1]), _number(record[2])
        texts = record[3]
        if isinstance(texts, str):
            rows.add(base, uid, HUMAN, texts, start, end)
            continue
        source = NARRATOR if len(record) == 5 else REPHRASED
        for k, text in enumerate(texts):
            rows.add(f"{base}#{k}", uid, source if k or source == NARRATOR else HUMAN, text, start, end)
    return rows.to_table()


def _shape_problem(record: Any) -> str | None:
    """Why a record is not one of LaViLa's tuples (None when it is)."""
    if not isinstance(record, tuple | list):
        return f"record is a {type(record).__name__}, not a tuple"
    if len(record) not in (4, 5):
        return f"tuple of {len(record)} fields; LaViLa's have 4 (video, start, end, text) or 5 (+ scores)"
    if not isinstance(record[0], str) or not record[0]:
        return "no video uid"
    texts = record[3]
    if len(record) == 4 and not isinstance(texts, str | list | tuple):
        return f"narration is a {type(texts).__name__}"
    if len(record) == 5:
        if not isinstance(texts, list | tuple) or not isinstance(record[4], list | tuple):
            return "narrator tuple without its lists of narrations and scores"
        if len(texts) != len(record[4]):
            return f"{len(texts)} narrations but {len(record[4])} scores"
    if isinstance(texts, list | tuple) and not texts:
        return "empty list of narrations"
    return None


def _number(value: Any) -> Any:
    """numpy and Python numbers as float; anything else as it is (validation names it)."""
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value


_CAMERA_WEARER_START = re.compile(r"^the camera wearer\b", re.IGNORECASE)
_CAMERA_WEARER = re.compile(r"\bthe camera wearer\b", re.IGNORECASE)
_OTHER = re.compile(r"\banother person\b", re.IGNORECASE)


def lavila_style(text: str, camera_wearer: str = "the camera wearer", other: str = "another person") -> str:
    """Our clean text in LaViLa's (Ego4D's) style: the camera wearer first is ``#C C``, elsewhere
    ``C``; another person is ``#O`` — the inverse of ingest's default tag words."""
    start = re.compile(rf"^{re.escape(camera_wearer)}\b", re.IGNORECASE) if camera_wearer else _CAMERA_WEARER_START
    inner = re.compile(rf"\b{re.escape(camera_wearer)}\b", re.IGNORECASE) if camera_wearer else _CAMERA_WEARER
    out = start.sub("#C C", text.strip())
    out = inner.sub("C", out)
    out = (re.compile(rf"\b{re.escape(other)}\b", re.IGNORECASE) if other else _OTHER).sub("#O", out)
    return out
