"""The in-process executor: a streaming job's plan run without Ray, with the Ray executor's
semantics — the same rows, rejects and counts, the error budget, an exact resume after a kill —
and the jobs or steps that need Ray refuse with one message."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from egoray import storage
from egoray.config import ConfigError
from egoray.data.raw import InputError
from egoray.inprocess import ExecutorConflict, NeedsRay, in_process
from egoray.plans import Listed, MapBatches, MapGroups, Prepared, SortLimit, Source
from egoray.stages.guard import StageFailing
from egoray.work_inputs import prepare, prepare_dataset
from tests.conftest import ROOT
from tests.killing import kill_group
from tests.poison import Config, run

N = 200
POISON = [sys.executable, "-m", "tests.poison"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inprocess_input")
    for f in range(5):  # five files of 40 rows
        ids = [f"t{f * 40 + i:03d}" for i in range(40)]
        storage.write_parquet(str(folder / f"part-{f}.parquet"),
                              pa.table({"id": ids, "text": [f"text of {i}" for i in ids]}))
    return folder


def _config(texts: Path, out: Path, **kw) -> Config:
    return Config(input=str(texts), output=str(out), ray={"in_process": True}, max_error_fraction=0.05, **kw)


def _check_complete(out: Path, bad: list[str]) -> dict:
    upper = storage.read_parquet(str(out / "upper")).to_pylist()
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    ids = [r["id"] for r in upper]
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert sorted(r["record_id"] for r in rejects) == sorted(bad)
    assert {(r["stage"], r["reason"]) for r in rejects} == {("upper", "stage_error")}
    assert len(ids) + len(rejects) == N and not set(ids) & set(bad)
    assert all(r["upper"] == f"TEXT OF {r['id'].upper()}" for r in upper)
    manifest = storage.read_json(str(out / "run.json"))
    assert manifest["status"] == "complete"
    assert manifest["stages"]["upper"] == {**manifest["stages"]["upper"], "in": N, "out": N - len(bad),
                                           "rejected": len(bad)}
    return manifest


def test_a_plan_runs_in_process_without_ray(texts, tmp_path):
    # in a fresh interpreter: the whole job, and Ray is never even imported
    bad = ["t007", "t093", "t150"]
    config = _config(texts, tmp_path / "out", bad=bad)
    script = ("import json, sys\nfrom tests.poison import Config, run\n"
              f"run(Config.model_validate_json({config.model_dump_json()!r}))\n"
              "print(json.dumps({'ray_imported': 'ray' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ray_imported": False}
    manifest = _check_complete(tmp_path / "out", bad)
    detail = storage.read_parquet(str(tmp_path / "out" / "rejects")).to_pylist()[0]["detail"]
    assert detail.startswith("ValueError: cannot take ['t") and "in process" in detail
    # one model load, 25 batches of 8 (as many as the Ray executor writes for this input)
    assert manifest["model_loads"] == {"upper": 1} and manifest["batches"] == N // 8
    assert manifest["items"] == N


def test_the_error_budget_stops_an_in_process_job(texts, tmp_path):
    with pytest.raises(StageFailing, match=r"stage 'upper' raised on 8 of 8 rows .*row 't000'"):
        run(_config(texts, tmp_path / "out", always=True))
    assert not (tmp_path / "out" / "run.json").exists()


def test_an_in_process_job_killed_mid_run_resumes_exactly(texts, tmp_path):
    bad = ["t050", "t123", "t188"]
    out = tmp_path / "out"
    # the stage blocks for good at its 11th call (inside the 7th batch): 6 batches are committed
    cfg = tmp_path / "hangs.yaml"
    on_ray = _config(texts, out, bad=bad, hang_after=10).model_dump(mode="json") | {"ray": {}}
    cfg.write_text(yaml.safe_dump(on_ray))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # `egoray run --in-process` (this job registered)
    proc = subprocess.Popen([*POISON, "run", str(cfg), "--in-process"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = out / "_counts"
    deadline = time.time() + 300
    while len(list(counts.glob("*.json"))) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    running = proc.poll() is None
    kill_group(proc)
    assert running, f"the job ended (code {proc.returncode}) before it could be killed"
    assert len(list(counts.glob("*.json"))) == 6 and not (out / "run.json").exists()
    # a write the kill cut short: some of its files are there, its counts record is not
    storage.write_parquet(str(out / "upper" / "local-00004-00004.parquet"), pa.table({"id": ["t000"],
                                                                                     "upper": ["WRONG"]}))
    stray = out / "upper" / "local-00004-00004.h5"  # a file of that batch the next run does not write again
    stray.write_bytes(b"half an HDF5")

    manifest = run(_config(texts, out, bad=bad))
    _check_complete(out, bad)
    assert not stray.exists()
    assert manifest["items"] == N and manifest["items_this_run"] == N - 6 * 8
    # what Ray Data began (its checkpoint) is not continued here
    (out / "run.json").unlink()
    (out / "_checkpoint").mkdir()
    with pytest.raises(ExecutorConflict, match="begun on Ray"):
        run(_config(texts, out, bad=bad))


def test_ray_does_not_continue_an_output_begun_in_process(ray_session, texts, tmp_path):
    out = tmp_path / "out"
    run(_config(texts, out, bad=[]))
    (out / "run.json").unlink()  # as a killed run leaves it
    with pytest.raises(ExecutorConflict, match="begun in process"):
        run(Config(input=str(texts), output=str(out), max_error_fraction=0.05))


def test_jobs_and_steps_that_need_ray_refuse_in_process(tmp_path):
    from egoray.pipelines import validate_config

    with pytest.raises(ConfigError, match="job 'ingest' runs on Ray only: ray.in_process"):
        validate_config({"job": "ingest", "input": str(tmp_path / "n.json"), "output": str(tmp_path / "i"),
                         "ray": {"in_process": True}})
    with in_process("train_dual_encoder"), pytest.raises(NeedsRay, match="job 'train_dual_encoder' prepares its "
                                                                       "input _work/pairs first"):
        prepare_dataset(str(tmp_path / "t"), "pairs", lambda: pytest.fail("built"))


def _per_video(group: pa.Table, scale: int) -> pa.Table:
    """One row per video: its rows counted, their numbers summed (in any order)."""
    return pa.table({"video": [group["video"][0].as_py()], "n": [group.num_rows],
                     "total": [scale * sum(group["x"].to_pylist())]})


class Labelled:
    """A class step: built once (per actor), called on batches."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.append_column("label", pa.array([f"{self.prefix}{v}" for v in batch["video"].to_pylist()]))


def test_a_prepared_input_is_the_same_written_by_ray_or_in_process(ray_session, tmp_path):
    folder = tmp_path / "rows"
    for f in range(3):  # one video's rows spread over every file
        storage.write_parquet(str(folder / f"part-{f}.parquet"), pa.table({
            "video": [f"v{(f + i) % 7}" for i in range(30)], "x": [f * 30 + i for i in range(30)],
            "split": ["train" if i % 3 else "val" for i in range(30)]}))
    source = Source(str(folder), columns=["video", "x", "split"],
                    where=lambda t: t.filter(pa.compute.equal(t["split"], "train")))
    prep = Prepared("per_video", source, [MapBatches(lambda b, k: b.set_column(1, "x", pa.compute.multiply(b["x"], k)),
                                                     batch_size=7, args=(2,)),
                                          MapGroups("video", _per_video, (10,)), SortLimit("video", 5),
                                          MapBatches(Labelled, 2, args=("video ",))])
    rows = []
    for out, local in ((tmp_path / "ray", False), (tmp_path / "local", True)):
        with in_process("test") if local else contextlib.nullcontext():
            url = prepare(str(out), prep)
        rows.append(sorted(storage.read_parquet(url).to_pylist(), key=lambda r: r["video"]))
        assert (out / "_work" / "per_video" / "_DONE.json").exists()
    kept = [(r["video"], r["x"]) for f in range(3) for r in [{"video": f"v{(f + i) % 7}", "x": f * 30 + i}
                                                             for i in range(30) if i % 3]]
    expected = [{"video": v, "n": sum(1 for w, _ in kept if w == v), "total": 20 * sum(x for w, x in kept if w == v),
                 "label": f"video {v}"} for v in sorted({w for w, _ in kept})[:5]]
    assert rows[0] == rows[1] == expected


def test_listed_rows_are_written_once_and_a_prepared_input_with_no_rows_is_an_input_error(tmp_path):
    built = []

    def names() -> pa.Table:  # what a folder listing returns: built by the driver, once per output
        built.append(1)
        return pa.table({"video": ["b", "a", "c"], "x": [2, 1, 3]})

    out = str(tmp_path / "out")
    with in_process("test"):
        listed = prepare(out, Prepared("files", Listed(names, "three names")))
        assert sorted(storage.read_parquet(listed).to_pylist(), key=lambda r: r["x"]) == [
            {"video": "a", "x": 1}, {"video": "b", "x": 2}, {"video": "c", "x": 3}]
        assert prepare(out, Prepared("files", Listed(names, "three names"))) == listed and built == [1]
        first = prepare(out, Prepared("first", Listed(names, "three names"), [SortLimit("video", 2)]))
        assert storage.read_parquet(first).to_pylist() == [{"video": "a", "x": 1}, {"video": "b", "x": 2}]
        with pytest.raises(InputError, match="^nothing to do$"):
            prepare(out, Prepared("none", Listed(names, "three names"),
                                  [MapBatches(lambda b: b.slice(0, 0))], empty="nothing to do"))
        with pytest.raises(InputError, match="^no names$"):
            prepare(out, Prepared("empty", Listed(lambda: pa.table({"video": pa.array([], pa.string())}), "none"),
                                  empty="no names"))
