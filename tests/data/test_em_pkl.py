import math
import os
import pickle

import pytest

from egoray.data.em_pkl import read_em_pickle
from egoray.data.raw import InputError
from egoray.data.safe_pickle import safe_load


class _Evil:
    """Unpickling this with the standard unpickler would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Point:
    def __init__(self):
        self.x = 1.5


def _clip(uid, narrations, pass_="narration_pass_1"):
    return {"clip_uid": uid, "narration_pass": pass_, "narrations": narrations}


def test_reads_clips():
    data = pickle.dumps([
        _clip("c1", [{"narration_text": "C opens a door. .", "timestamps": [0.5, 2.0]},
                     {"narration_text": "C closes it", "timestamps": (2.0, 3.5)}]),
        _clip("c2", [{"narration_text": "C sits", "timestamps": [1, 4]}], "narration_pass_2"),
    ])
    raw = read_em_pickle(data)
    assert raw["narration_id"].to_pylist() == ["c1:1:0", "c1:1:1", "c2:2:0"]
    assert raw["video_uid"].to_pylist() == raw["clip_uid"].to_pylist() == ["c1", "c1", "c2"]
    assert raw["t_start"].to_pylist() == [0.5, 2.0, 1.0]
    assert raw["t_end"].to_pylist() == [2.0, 3.5, 4.0]
    assert raw["issue"].null_count == 3


def test_foreign_classes_are_rejected_without_running_anything(tmp_path):
    target = tmp_path / "pwned"
    data = pickle.dumps([
        _clip("ok", [{"narration_text": "C sits", "timestamps": [0, 1]},
                     {"narration_text": _Evil(str(target)), "timestamps": [1, 2]},
                     {"narration_text": "C stands", "timestamps": [_Point(), 2]}]),
        _Evil(str(target)),
        {1, 2},  # a set is a builtin container: allowed, but not a clip
    ])
    raw = read_em_pickle(data)
    assert not target.exists()
    rows = raw.to_pylist()
    assert [r["issue"] for r in rows] == [None, "unknown_pickle_class", "unknown_pickle_class",
                                          "unknown_pickle_class", "missing_field"]
    assert "builtins.open" in rows[1]["issue_detail"] or "io.open" in rows[1]["issue_detail"]
    assert "_Point" in rows[2]["issue_detail"]


def test_missing_fields_and_bad_timestamps():
    data = pickle.dumps([
        _clip("c", [{"narration_text": "a b", "timestamps": [float("nan"), 1.0]},
                    {"narration_text": "a b"},
                    {"narration_text": "a b", "timestamps": ["x", 1.0]},
                    "not a dict"]),
        {"narration_pass": "narration_pass_1", "narrations": []},
    ])
    raw = read_em_pickle(data)
    assert [r["issue"] for r in raw.to_pylist()] == [None, "missing_field", "bad_timestamp", "missing_field",
                                                      "missing_field"]
    assert math.isnan(raw["t_start"][0].as_py())


@pytest.mark.parametrize("data", [pickle.dumps([_clip("c", [])])[:-5], b"not a pickle", b""])
def test_unreadable_pickle_is_a_clear_error(data):
    with pytest.raises(InputError, match="not a readable pickle"):
        read_em_pickle(data, "em.pkl")


def test_top_level_must_be_a_list():
    with pytest.raises(InputError, match="expected a list"):
        read_em_pickle(pickle.dumps({"a": 1}))


def test_safe_load_allows_builtin_scalars_and_containers():
    obj = {"a": [1, 2.5, "x", None, True], "b": (1, 2), "c": {3}, "d": frozenset({4}), "e": b"y", "f": 1 + 2j}
    for protocol in (2, 4, 5):
        assert safe_load(pickle.dumps(obj, protocol=protocol)) == obj
    assert os.getcwd()  # nothing above touched the process state
