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


def test_ego4d_json_holds_out_every_benchmarks_val_and_test_videos(tmp_path):
    from egoray.data.splits import read_splits

    meta = {"version": "v2", "videos": [
        {"video_uid": "a", "split_em": "train", "split_fho": None, "split_av": None},
        {"video_uid": "b", "split_em": "train", "split_fho": "val", "split_av": None},
        {"video_uid": "c", "split_em": "val", "split_fho": "test", "split_av": "train"},
        {"video_uid": "d", "split_em": None, "split_fho": None, "split_av": None},
        {"video_uid": "e", "split_em": "multi", "split_fho": "train"}]}
    (tmp_path / "ego4d.json").write_text(json.dumps(meta))
    assert read_splits(str(tmp_path / "ego4d.json")) == {"a": "train", "b": "val", "c": "test", "e": "train"}
