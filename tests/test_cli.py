"""The ``egoray`` command as a user runs it, including a real SIGKILL of a running job."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from egoray import storage
from egoray.cli import main
from egoray.pipelines import ingest, validate_config
from tests.conftest import ROOT
from tests.killing import kill_group

DEMO_INGEST = str(ROOT / "configs" / "demo" / "ingest.yaml")
EGORAY = [sys.executable, "-m", "egoray"]


def test_bad_key_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["run", DEMO_INGEST, f"output={out}", "clean.min_wrds=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "clean.min_wrds" in err and "unknown key" in err
    assert not out.exists()
    assert main(["run", DEMO_INGEST, f"output={out}", "num_shards=zero"]) == 2
    assert "num_shards" in capsys.readouterr().err


def test_missing_input_is_one_clear_line(tmp_path, capsys, ray_session):
    code = main(["run", DEMO_INGEST, f"input={tmp_path}/nope.json", f"output={tmp_path}/o", "splits=null"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"egoray: error: input not found: {tmp_path}/nope.json"]


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["run", DEMO_INGEST, "--dry-run", "num_shards=5", "input=s3://b/n.json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_shards"] == 5 and printed["input"] == "s3://b/n.json" and printed["job"] == "ingest"


def test_plan_prints_what_a_streaming_job_would_run_and_writes_nothing(ingested_small, synth_videos, tmp_path,
                                                                        capsys):
    qa_out, features_out = tmp_path / "qa", tmp_path / "features"
    assert main(["run", str(ROOT / "configs" / "demo" / "qa.yaml"), "--plan", f"input={ingested_small}",
                 f"output={qa_out}", "grouping.limit=7", "engine.num_actors=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    narrations = storage.join(str(ingested_small), "narrations")
    assert lines[:4] == ["job pass 'qa', keyed by group_id, 256 rows per committed file",
                         f"prepare _work/groups from {narrations}",
                         "  then groups_of_video per video_uid",
                         "  then the first 7 rows by group_id"]
    assert "stage generate: LLMStage, 2 actor(s) × 1 CPU, batches of 16" in lines
    assert lines[-2:] == ["sink QASink (tables it always writes: qa, rejects)",
                          f"resume refused if changed: 1 input(s), e.g. {narrations}"]

    assert main(["run", str(ROOT / "configs" / "demo" / "video_features.yaml"), "--plan",
                 f"input={synth_videos / 'videos'}", f"output={features_out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    n_videos = len(list((synth_videos / "videos").glob("*.mp4")))
    assert lines[1] == f"prepare _work/videos from the {n_videos} video files of {synth_videos / 'videos'}"
    assert "stage decode_encode: VideoFeatureStage, 1 actor(s) × 1 CPU, batches of 1" in lines
    assert not qa_out.exists() and not features_out.exists()

    vlm_out = tmp_path / "vlm"
    assert main(["run", str(ROOT / "configs" / "demo" / "train_vlm.yaml"), "--plan", f"input={ingested_small}",
                 f"videos={synth_videos / 'videos'}", f"output={vlm_out}", "train.num_workers=2",
                 "train.epochs=4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"pairs built per video by Ray Data under _work/, from 1 input(s): {narrations}"
    assert lines[1].startswith("train with Ray Train: 2 worker(s) × 1 CPU, DeepSpeed ZeRO-2, fp32, workers run ")
    assert lines[2].startswith("  4 epoch(s), batches of ")
    assert not vlm_out.exists()

    ingest_out = tmp_path / "ingest"
    assert main(["run", DEMO_INGEST, "--plan", f"input={synth_videos / 'narration.json'}",
                 f"splits={synth_videos / 'splits.json'}", f"output={ingest_out}", "num_shards=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"read {synth_videos / 'narration.json'} (ego4d_json), split by video into 3 buckets",
                     "each bucket cleaned, deduplicated and given its split by a task: narrations, rejects, summaries",
                     "3 shard(s), each committed with its marker: 0000, 0001, 0002",
                     "resume: finished shards are kept; refused if these inputs or the config change (2 input(s))"]
    assert not ingest_out.exists()


def test_every_job_declares_a_plan():
    from egoray.pipelines import job_module, job_names

    assert [n for n in job_names() if not callable(getattr(job_module(n), "plan", None))] == []


def test_synth_command(tmp_path):
    result = subprocess.run([*EGORAY, "synth", str(tmp_path / "s"), "--videos", "2", "--seed", "5", "--no-videos"],
                            capture_output=True, text=True, check=True)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["videos"] == 2 and manifest["seed"] == 5
    assert "synthetic dataset written to" in result.stdout
    assert not (tmp_path / "s" / "videos").exists()


def _markers(out: Path) -> int:
    return len(list((out / "_shards").glob("0*.json"))) if (out / "_shards").exists() else 0


def _start(out: Path, data: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*EGORAY, "run", DEMO_INGEST, f"input={data}/narration.json", f"splits={data}/splits.json",
         f"output={out}", "num_shards=48", "ray.num_cpus=2"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _tables(out: str) -> dict:
    return {name: storage.read_parquet(storage.join(out, name)).sort_by("record_id" if name == "rejects" else
                                                                      ("summary_id" if name == "summaries"
                                                                       else "narration_id"))
            for name in ("narrations", "rejects", "summaries")}


def test_sigkilled_job_resumes_to_the_uninterrupted_output(tmp_path, ray_session):
    from egoray.data.synth import synthesize

    data = tmp_path / "data"
    synthesize(str(data), videos=300, seed=21, actions_per_video=30, with_videos=False)
    reference = tmp_path / "reference"
    config = validate_config({"job": "ingest", "input": f"{data}/narration.json", "splits": f"{data}/splits.json",
                              "output": str(reference), "num_shards": 48, "clean": {"min_words": 2}})
    expected_manifest = ingest.run(config)

    out = tmp_path / "killed"
    # Kill 1: while Ray is still starting, before any shard is written.
    proc = _start(out, data)
    time.sleep(2.0)
    assert proc.poll() is None
    kill_group(proc)
    assert _markers(out) == 0

    # Kill 2: with some but not all shards committed.
    killed_midway = False
    for _attempt in range(3):
        proc = _start(out, data)
        deadline = time.time() + 120
        while _markers(out) == 0 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        kill_group(proc)
        if 0 < _markers(out) < 48:
            killed_midway = True
            break
        storage.remove(str(out), recursive=True)  # it finished before the kill: try again
    assert killed_midway

    result = subprocess.run([*EGORAY, "run", DEMO_INGEST, f"input={data}/narration.json",
                             f"splits={data}/splits.json", f"output={out}", "num_shards=48"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["shards"]["resumed"] > 0
    assert resumed["stages"] == {**resumed["stages"], **{k: {**v, "seconds": resumed["stages"][k]["seconds"]}
                                                         for k, v in expected_manifest["stages"].items()}}
    got, want = _tables(str(out)), _tables(str(reference))
    for name in want:
        assert got[name].equals(want[name]), name
    list_files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*")  # noqa: E731
                                     if p.is_file() and p.name not in ("run.json", "_plan.json")
                                     and p.relative_to(root).parts[0] != "_logs")  # each run's own log
    assert list_files(out) == list_files(reference)
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporaries left behind


@pytest.mark.parametrize("argv", [["--version"], ["run", "--help"]])
def test_help_and_version(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "egoray" in capsys.readouterr().out


def test_a_demo_config_runs_with_only_input_and_output(synth_small, tmp_path, ray_session):
    assert main(["run", DEMO_INGEST, f"input={synth_small / 'narration.json'}", f"output={tmp_path / 'o'}"]) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["status"] == "complete" and run["config"]["splits"] is None
    assert run["started_at"] <= run["finished_at"]


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only our own errors (bad input, storage, config) become one line; a bug is not hidden."""
    from egoray.pipelines import ingest as ingest_module

    def broken(config, overwrite=False):
        raise ValueError("a bug in egoray")

    monkeypatch.setattr(ingest_module, "run", broken)
    with pytest.raises(ValueError, match="a bug in egoray"):
        main(["run", DEMO_INGEST, f"output={tmp_path / 'o'}"])


def test_demo_refuses_unknown_steps(capsys):
    assert main(["demo", "--out", "/nonexistent/never", "--skip", "qa", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown demo step(s) ['nope']" in err and "train_narrator" in err
