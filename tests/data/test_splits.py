import json

import pytest

from egoray.data.raw import InputError
from egoray.data.splits import read_splits


def test_json_and_csv(tmp_path):
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"train": ["a", "b"], "validation": ["c"], "test": []}))
    assert read_splits(str(j)) == {"a": "train", "b": "train", "c": "val"}
    c = tmp_path / "s.csv"
    c.write_text("video_id,split\na,train\nc,val\n")
    assert read_splits(str(c)) == {"a": "train", "c": "val"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"train": ["a"], "val": ["a"]}, "both"),
        ({"holdout": ["a"]}, "unknown split"),
        ({"train": "a"}, "list of video uid"),
    ],
)
def test_bad_splits(tmp_path, content, message):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(content))
    with pytest.raises(InputError, match=message):
        read_splits(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read splits"):
        read_splits(str(tmp_path / "nope.json"))
