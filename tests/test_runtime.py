import zlib

import pyarrow as pa
import pytest

from egoray.pipelines import validate_config
from egoray.runtime import OutputConflict, RunManifest, ShardLedger, bucket_of, claim_output
from egoray.stages.base import StageCounts, StageTimer


def _config(output, **kw):
    return validate_config({"job": "ingest", "input": "x.json", "output": str(output), **kw})


def test_ledger_commit_and_resume(tmp_path):
    config = _config(tmp_path / "out")
    ledger = ShardLedger(config.output)
    ledger.prepare(config, ["00-0000", "00-0001"])
    assert ledger.completed() == {}
    marker = ledger.commit("00-0000", {"narrations": pa.table({"a": [1, 2]})},
                           {"validate": {"in": 3, "out": 2, "rejected": 1}})
    assert marker["rows"] == {"narrations": 2}
    assert list(ledger.completed()) == ["00-0000"]
    # A second prepare with the same config keeps completed shards...
    ShardLedger(config.output).prepare(config, ["00-0000", "00-0001"])
    assert list(ledger.completed()) == ["00-0000"]
    # ...a different config is refused, and --overwrite starts again.
    other = _config(tmp_path / "out", num_shards=3)
    with pytest.raises(OutputConflict, match="different config"):
        ShardLedger(other.output).prepare(other, ["00-0000"])
    ShardLedger(other.output).prepare(other, ["00-0000"], overwrite=True)
    assert ShardLedger(other.output).completed() == {}


def test_prepare_removes_half_written_files(tmp_path):
    config = _config(tmp_path / "out")
    ShardLedger(config.output).prepare(config, ["00-0000"])  # a run that was killed mid-write
    (tmp_path / "out" / "narrations").mkdir(parents=True)
    stale = tmp_path / "out" / "narrations" / ".part-00-0000.parquet.tmp-0123abcd"
    stale.write_bytes(b"partial")
    ShardLedger(config.output).prepare(config, ["00-0000"])
    assert not stale.exists()


def test_manifest_sums_markers(tmp_path):
    config = _config(tmp_path / "out")
    m = RunManifest.start(config)
    m.add_stages([
        {"stages": {"validate": {"in": 3, "out": 2, "rejected": 1, "seconds": 0.5}}},
        {"stages": {"validate": {"in": 4, "out": 4, "rejected": 0, "seconds": 0.25}}},
    ])
    d = m.to_dict()
    assert d["stages"]["validate"] == {"in": 7, "out": 6, "rejected": 1, "seconds": 0.75}
    assert d["versions"]["pyarrow"] == pa.__version__
    assert d["config"]["output"] == str(tmp_path / "out")


def test_stage_timer():
    timer = StageTimer()
    with timer.stage("a") as c:
        c.n_in, c.n_out, c.rejected = 5, 4, 1
    assert timer.stages["a"].n_in == 5 and timer.stages["a"].seconds >= 0
    assert StageCounts.from_dict(timer.to_dict()["a"]).n_out == 4


def test_buckets_are_stable_and_spread():
    keys = [f"video-{i}" for i in range(1000)]
    a = bucket_of(keys, 8)
    assert a == bucket_of(list(keys), 8)
    assert a[0] == zlib.crc32(b"video-0") % 8  # CRC-32: the same in every process, unlike hash()
    counts = [a.count(b) for b in range(8)]
    assert min(counts) > 80


def test_changed_input_is_refused(tmp_path):
    src = tmp_path / "narration.json"
    src.write_text("{}")
    config = _config(tmp_path / "out")
    ShardLedger(config.output).prepare(config, ["00-0000"], inputs=[str(src)])
    ShardLedger(config.output).prepare(config, ["00-0000"], inputs=[str(src)])  # unchanged: fine
    src.write_text('{"v": {}}')
    with pytest.raises(OutputConflict, match="earlier version"):
        ShardLedger(config.output).prepare(config, ["00-0000"], inputs=[str(src)])


def test_changed_item_set_is_refused(tmp_path):
    config = _config(tmp_path / "out")
    ShardLedger(config.output).prepare(config, ["0000"], items=["b", "a"])
    ShardLedger(config.output).prepare(config, ["0000"], items=["a", "b"])  # same set: fine
    with pytest.raises(OutputConflict, match="set of input items"):
        ShardLedger(config.output).prepare(config, ["0000"], items=["a", "b", "c"])


def test_overwrite_refuses_a_directory_that_is_not_an_egoray_output(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    config = _config(mine)
    with pytest.raises(OutputConflict, match="not an egoray output|holds no egoray output"):
        claim_output(config, overwrite=True)
    with pytest.raises(OutputConflict, match="holds no egoray output"):
        claim_output(config)  # nor is it written into
    assert (mine / "chapter1.tex").read_text() == "years of work"
    # an egoray output is cleared by --overwrite; an empty directory is fine
    out = tmp_path / "out"
    assert claim_output(_config(out)) is False
    (out / "narrations").mkdir()
    (out / "narrations" / "part.parquet").write_bytes(b"x")
    assert claim_output(_config(out)) is True
    assert claim_output(_config(out), overwrite=True) is False
    assert not (out / "narrations").exists()


def test_run_manifest_started_at_is_when_the_job_started(tmp_path):
    import time

    m = RunManifest.start(_config(tmp_path / "out"))
    time.sleep(1.1)
    m.status = "complete"
    d = m.to_dict()
    assert d["started_at"] < d["finished_at"]
