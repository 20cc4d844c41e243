import pyarrow as pa
import pytest

from egoray.data.narrations import CleanOptions, build_narrations
from egoray.data.raw import RawRows
from egoray.stages.base import StageTimer


def _raw(rows):
    r = RawRows()
    for row in rows:
        r.add(**row)
    return r.to_table()


def _row(nid, text="#C C takes a cup", start=1.0, end=None, video="v1", **kw):
    return {"narration_id": nid, "video_uid": video, "source": "ego4d", "raw_text": text,
            "t_start": start, "t_end": start if end is None else end, "pass_": 1, **kw}


def _run(rows, options=None, splits=None):
    timer = StageTimer()
    out, rejects = build_narrations(_raw(rows), options or CleanOptions(), splits, timer)
    return out, rejects, timer.to_dict()


def test_every_record_is_accounted_for():
    rows = [
        _row("a", start=5.0),
        _row("b", start=1.0),
        _row("nan", start=float("nan")),
        _row("neg", start=-2.0),
        _row("rev", start=3.0, end=2.0),
        _row("empty", text="  . "),
        _row("short", text="#C C sits"),
        _row("a", text="#C C repeats an id", start=9.0),
        _row("dup", start=5.0),  # same video/pass/time/text as "a"
        _row("other", video="v2", start=2.0),
        _row("nostr", text=None),
    ]
    out, rejects, stages = _run(rows, CleanOptions(min_words=5), {"v2": "val"})
    reasons = dict(zip(rejects["record_id"].to_pylist(), rejects["reason"].to_pylist(), strict=True))
    assert reasons == {
        "nan": "bad_timestamp", "neg": "bad_timestamp", "rev": "bad_timestamp",
        "empty": "empty_text", "nostr": "missing_field", "short": "too_few_words",
        "a": "duplicate_id", "dup": "duplicate_narration",
    }
    assert out["narration_id"].to_pylist() == ["b", "a", "other"]  # sorted by video, pass, time
    assert out["split"].to_pylist() == ["train", "train", "val"]
    assert out["text"][0].as_py() == "The camera wearer takes a cup"
    assert out.num_rows + rejects.num_rows == len(rows)
    previous_out = None
    for name in ("validate", "normalise", "dedupe", "splits"):
        c = stages[name]
        assert c["in"] == c["out"] + c["rejected"]
        if previous_out is not None:
            assert c["in"] == previous_out
        previous_out = c["out"]
    assert stages["validate"]["in"] == len(rows) and stages["splits"]["out"] == out.num_rows


def test_rejects_keep_the_input():
    _, rejects, _ = _run([_row("x", start=-1.0, text="#C C drops the pan")])
    import json

    kept = json.loads(rejects["input"][0].as_py())
    assert kept["raw_text"] == "#C C drops the pan" and kept["t_start"] == -1.0
    assert rejects["stage"].to_pylist() == ["validate"]


def test_drop_splits_rejects_held_out_videos():
    rows = [_row("t", video="vt"), _row("v", video="vv"), _row("s", video="vs"), _row("u", video="unlisted")]
    out, rejects, stages = _run(rows, CleanOptions(drop_splits=["val", "test"]),
                                {"vt": "train", "vv": "val", "vs": "test"})
    assert out["narration_id"].to_pylist() == ["u", "t"]  # sorted by video uid
    assert sorted(rejects["record_id"].to_pylist()) == ["s", "v"]
    assert set(rejects["reason"].to_pylist()) == {"split_excluded"}
    assert stages["splits"] == {**stages["splits"], "in": 4, "out": 2, "rejected": 2}


def test_reader_split_is_kept_unless_the_splits_file_says_otherwise():
    rows = [_row("a", video="x", split="val"), _row("b", video="y", split="val")]
    out, _, _ = _run(rows, splits={"y": "test"})
    assert dict(zip(out["narration_id"].to_pylist(), out["split"].to_pylist(), strict=True)) == {"a": "val", "b": "test"}


def test_empty_input():
    out, rejects, stages = _run([])
    assert out.num_rows == 0 and rejects.num_rows == 0
    assert stages["validate"]["in"] == 0


@pytest.mark.parametrize("bad", [-1, "x"])
def test_options_are_validated(bad):
    with pytest.raises(Exception, match="min_words"):
        CleanOptions(min_words=bad)


def test_output_schema():
    out, _, _ = _run([_row("a")])
    from egoray.data.schema import NARRATIONS

    assert out.schema.equals(NARRATIONS)
    assert isinstance(out, pa.Table)
