"""Poison batches on Ray: a stage raising on some rows loses only those rows (rejected as
stage_error, counts exact, also across a kill and a resume); a stage failing on every row, or on
more rows than the error budget allows, stops the job with one message, and the job resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from egoray import storage
from tests.conftest import ROOT
from tests.killing import assert_no_leftovers, kill_mid_run
from tests.poison import Config, run

N = 200
POISON = [sys.executable, "-m", "tests.poison"]


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("poison_input")
    for f in range(5):  # five files of 40 rows
        ids = [f"t{f * 40 + i:03d}" for i in range(40)]
        storage.write_parquet(str(folder / f"part-{f}.parquet"),
                              pa.table({"id": ids, "text": [f"text of {i}" for i in ids]}))
    return folder


def _rows(out: Path) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    upper = storage.read_parquet(str(out / "upper")).to_pylist()
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    return {r["id"]: r["upper"] for r in upper}, {r["record_id"]: (r["stage"], r["reason"]) for r in rejects}


def _check_complete(out: Path, bad: list[str]) -> None:
    upper, rejects = _rows(out)
    n_upper = len(storage.read_parquet(str(out / "upper")))
    n_rejects = len(storage.read_parquet(str(out / "rejects")))
    assert n_upper == len(upper) and n_rejects == len(rejects), "a row was written twice"
    assert sorted(rejects) == sorted(bad) and set(rejects.values()) == {("upper", "stage_error")}
    assert len(upper) + len(rejects) == N and not set(upper) & set(rejects)
    assert all(v == f"TEXT OF {k.upper()}" for k, v in upper.items())
    manifest = storage.read_json(str(out / "run.json"))
    assert manifest["status"] == "complete"
    assert manifest["stages"]["upper"] == {**manifest["stages"]["upper"], "in": N, "out": N - len(bad),
                                           "rejected": len(bad)}


def _subprocess(config: Config, tmp_path: Path) -> subprocess.CompletedProcess:
    import ray

    path = tmp_path / "poison.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "EGORAY_IO_CPUS": "0", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.run([*POISON, "run", str(path)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_rows_a_stage_raises_on_are_rejected_and_the_rest_is_intact(ray_session, texts, tmp_path):
    bad = ["t007", "t093", "t150"]
    # 3 in 200 rows, but all three may come in the first 100: a budget of 5%
    config = Config(input=str(texts), output=str(tmp_path / "out"), bad=bad, max_error_fraction=0.05)
    manifest = run(config)
    _check_complete(tmp_path / "out", bad)
    detail = storage.read_parquet(str(tmp_path / "out" / "rejects")).to_pylist()[0]["detail"]
    assert detail.startswith("ValueError: cannot take ['t") and "in process" in detail
    assert manifest["actors"] == manifest["actors_configured"] == {"upper": 2}
    assert manifest["model_loads"] == {"upper": 2}


def test_poisoned_rows_across_a_kill_and_a_resume(ray_session, texts, tmp_path):
    bad = ["t001", "t077", "t199"]
    config = Config(input=str(texts), output=str(tmp_path / "out"), bad=bad, batch_size=4, max_error_fraction=0.05)
    assert kill_mid_run(config, tmp_path, command=POISON) >= 1
    run(config)
    _check_complete(tmp_path / "out", bad)
    assert_no_leftovers(tmp_path / "out")


def test_a_stage_that_always_raises_stops_the_job_early_with_one_message(ray_session, texts, tmp_path):
    config = Config(input=str(texts), output=str(tmp_path / "out"), always=True, batch_size=4)
    done = _subprocess(config, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("egoray: error: stage 'upper' raised on ") and "ValueError: cannot take ['t" in last
    assert "first: row 't" in last and "resumes" in last
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout  # Ray's are in the log file
    written = storage.listdir(str(tmp_path / "out" / "rejects"), ".parquet")
    assert len(written) * config.batch_size < N / 2, "the job should have stopped early"
    assert not (tmp_path / "out" / "run.json").exists()


def test_over_the_error_budget_the_job_stops_and_then_resumes(ray_session, texts, tmp_path):
    bad = [f"t{i:03d}" for i in range(3, N, 10)]  # 10% of the rows, spread over every file
    config = Config(input=str(texts), output=str(tmp_path / "out"), bad=bad)
    done = _subprocess(config, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "max_error_fraction=0.01" in done.stderr.strip().splitlines()[-1]
    run(config.model_copy(update={"max_error_fraction": 0.2}))  # a wider budget, the same output
    _check_complete(tmp_path / "out", bad)
