"""LaViLa's metadata pickles: every shape in, bad records rejected with reasons, our texts out in
LaViLa's style."""

import pickle

import numpy as np
import pytest

from egoray.data.lavila import is_lavila_pickle, lavila_style, read_lavila_pickle
from egoray.data.raw import InputError


class Smuggled:  # a class the reader must never construct
    def __reduce__(self):
        return (print, ("ran code",))


RECORDS = [
    ("v1", 1.0, 2.5, "#C C opens the drawer"),                                    # human narration
    ("v1", np.float64(3.0), np.float32(4.0), ["#C C cuts an onion", "C slices an onion", "C chops an onion"]),
    ("v2", 0.5, 1.5, ["#C C walks", "#C C walks around"], [1.2, 2.5]),            # narrator samples + scores
    ("v2", 5.0, 4.0, "#C C reads"),                                               # end before start
    ("v2", 6.0, 7.0, "   "),                                                      # empty text
    ("v3", 1.0, 2.0),                                                             # 3 fields
    ("v3", 1.0, 2.0, ["a", "b"], [0.1]),                                          # scores do not match
    ("v3", 1.0, 2.0, Smuggled()),                                                 # a foreign class
    "not a tuple",
]


def test_every_lavila_shape_becomes_rows_and_bad_records_carry_their_reason():
    table = read_lavila_pickle(pickle.dumps(RECORDS), "ego4d_train.pkl").to_pylist()
    rows = {r["narration_id"]: r for r in table}
    assert rows["v1:0"]["raw_text"] == "#C C opens the drawer" and rows["v1:0"]["source"] == "lavila"
    # the rephraser's list: the original and one row per paraphrase, numpy times as floats
    assert [rows[f"v1:1#{k}"]["raw_text"] for k in range(3)] == list(RECORDS[1][3])
    assert [rows[f"v1:1#{k}"]["source"] for k in range(3)] == ["lavila", "lavila_rephraser", "lavila_rephraser"]
    assert rows["v1:1#2"]["t_start"] == 3.0 and rows["v1:1#2"]["t_end"] == 4.0
    assert [rows[f"v2:2#{k}"]["source"] for k in range(2)] == ["lavila_narrator"] * 2
    assert rows["v2:3"]["issue"] is None  # end before start: the validate stage rejects it
    issues = {k: r["issue"] for k, r in rows.items() if r["issue"]}
    assert issues == {"v3:5": "bad_record", "v3:6": "bad_record", "v3:7": "unknown_pickle_class",
                      "record:8": "bad_record"}
    assert "1 scores" in rows["v3:6"]["issue_detail"] and "3 fields" in rows["v3:5"]["issue_detail"]


def test_lavila_lists_are_told_from_ego4d_clip_dicts():
    assert is_lavila_pickle(RECORDS) and not is_lavila_pickle([{"clip_uid": "c"}]) and not is_lavila_pickle([])
    with pytest.raises(InputError, match="expected a list"):
        read_lavila_pickle(pickle.dumps({"v1": 1}), "x.pkl")


def test_lavila_style_inverts_the_default_tag_words():
    assert lavila_style("The camera wearer gives the knife to another person") == "#C C gives the knife to #O"
    assert lavila_style("Another person hands the camera wearer a cup") == "#O hands C a cup"
    assert lavila_style("cuts an onion") == "cuts an onion"
