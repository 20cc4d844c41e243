import json

import pytest

from egoray.data.ego4d import read_narration_json
from egoray.data.raw import InputError


def _file(videos: dict) -> bytes:
    return json.dumps(videos).encode()


def _n(ts, text="#C C opens the door", frame=None):
    return {"timestamp_sec": ts, "timestamp_frame": frame, "narration_text": text, "annotation_uid": "a1"}


def test_rows_ids_and_summaries():
    data = _file({
        "v1": {
            "narration_pass_1": {"narrations": [_n(3.0), _n(1.0, "#C C cuts")],
                                 "summaries": [{"start_sec": 0, "end_sec": 9, "summary_text": "#Summary C cooks",
                                                "annotation_uid": "a1"}]},
            "narration_pass_2": {"narrations": [_n(2.5)], "summaries": []},
        },
        "v2": {"narration_pass_2": {"narrations": [_n(7)]}},  # pass 1 missing
    })
    raw, summaries = read_narration_json(data)
    assert raw["narration_id"].to_pylist() == ["v1:1:0", "v1:1:1", "v1:2:0", "v2:2:0"]
    assert raw["pass"].to_pylist() == [1, 1, 2, 2]
    assert raw["t_start"].to_pylist() == raw["t_end"].to_pylist() == [3.0, 1.0, 2.5, 7.0]
    assert raw["issue"].null_count == 4
    assert summaries.num_rows == 1
    assert summaries.to_pylist()[0]["t_end"] == 9.0


def test_bad_records_are_flagged_not_dropped():
    data = _file({"v": {"narration_pass_1": {"narrations": [
        {"timestamp_sec": "abc", "narration_text": "x y"},
        {"narration_text": "no time"},
        {"timestamp_sec": 1.0},
        {"timestamp_sec": 1.0, "narration_text": 5},
        _n(-1.0),
    ]}}})
    raw, _ = read_narration_json(data)
    assert raw.num_rows == 5
    assert raw["issue"].to_pylist() == ["bad_timestamp", "bad_timestamp", "missing_field", "bad_text", None]
    assert "not a number" in raw["issue_detail"][0].as_py()


def test_python_nan_literals_are_read():
    data = b'{"v": {"narration_pass_1": {"narrations": [{"timestamp_sec": NaN, "narration_text": "a b"}]}}}'
    raw, _ = read_narration_json(data)
    assert raw.num_rows == 1
    assert raw["t_start"][0].as_py() != raw["t_start"][0].as_py()  # NaN, rejected later by validate


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"v": {"narration_pass_1": {"narrations": [{"timestamp_sec": 1', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b'{"v": {"narration_pass_1": {"narrations": {"a": 1}}}}', "narration.json layout"),
        (b'[1, 2, 3]', "narration.json layout"),
    ],
)
def test_unreadable_files_raise_clear_errors(data, message):
    with pytest.raises(InputError, match=message):
        read_narration_json(data, "narration.json")


def test_fast_and_exact_paths_agree():
    from egoray.data.ego4d import _narrations_columnar, _narrations_rowwise, decode

    data = (b'{"a": {"narration_pass_1": {"narrations": [{"timestamp_sec": 1.5, "narration_text": "#C C x"},'
            b' {"timestamp_sec": null, "narration_text": "y"}, {"timestamp_sec": Infinity, "narration_text": "z"},'
            b' {"timestamp_sec": 2, "narration_text": null}, {"narration_text": "w"}]},'
            b' "narration_pass_2": {"narrations": [{"timestamp_sec": 0.0, "narration_text": ""}]}},'
            b' "b": {"narration_pass_2": {"narrations": []}}, "c": {}}')
    videos = decode(data)
    fast = _narrations_columnar(videos)
    assert fast is not None
    assert fast.equals(_narrations_rowwise(videos))
    assert fast["issue"].to_pylist() == [None, "bad_timestamp", "bad_timestamp", "missing_field", "bad_timestamp", None]
