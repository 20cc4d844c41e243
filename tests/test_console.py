"""The console: egoray's lines on the terminal, Ray's and the libraries' output in the log file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

from egoray.cli import main
from egoray.console import terminal_text
from tests.conftest import ROOT

EGORAY = [sys.executable, "-m", "egoray"]


def test_terminal_text_keeps_only_tagged_lines_without_ray_s_prefix():
    echoed = "\x1b[36m(RayTrainWorker pid=24915)\x1b[0m [train_vlm] epoch 2/3 step 8 {'loss': 1.5}"
    assert terminal_text(echoed, {"train_vlm"}) == "[train_vlm] epoch 2/3 step 8 {'loss': 1.5}"
    assert terminal_text("(pid=1, ip=10.0.0.2) [train_vlm] epoch 1/3", {"train_vlm"}) == "[train_vlm] epoch 1/3"
    assert terminal_text(echoed, {"qa"}) is None  # another job's tag
    assert terminal_text("[transformers] `loss_type=None` was set", {"train_vlm"}) is None
    assert terminal_text("2026-12-06 01:02:45 INFO logging_progress.py:174 -- Running Dataset", {"x"}) is None


def test_quiet_sends_python_and_c_level_output_to_the_log_and_shows_tagged_lines_once(tmp_path):
    log = tmp_path / "logs" / "run.log"
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from egoray.console import quiet, say
        with quiet(Path({str(log)!r}), tags={{"job"}}):
            print("a library's chatter")
            print("warning on stderr", file=sys.stderr)
            os.write(2, b"core_worker.cc: a C++ error line\\n")
            for _ in range(2):  # Ray echoes a worker's line twice
                print("(RayTrainWorker pid=7) [job] epoch 1/2 step 4 {{'loss': 2.0}}")
            print("(RayTrainWorker pid=7) [job] epoch 2/2 step 8 {{'loss': 1.0}}")
            say("job: complete")
        print("after")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[job] epoch 1/2 step 4 {'loss': 2.0}", "[job] epoch 2/2 step 8 {'loss': 1.0}",
                                        "job: complete", "after"]
    assert done.stderr == ""
    text = log.read_text()
    for line in ("a library's chatter", "warning on stderr", "core_worker.cc: a C++ error line", "job: complete"):
        assert line in text
    assert text.count("[job] epoch 1/2") == 2  # the log keeps everything


def test_egoray_run_prints_its_summary_and_where_the_log_is(ray_session, synth_small, tmp_path):
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # joining: no Ray to start
    out = tmp_path / "narrations"
    args = ["run", str(ROOT / "configs" / "demo" / "ingest.yaml"), f"input={synth_small / 'narration.json'}",
            f"splits={synth_small / 'splits.json'}"]
    done = subprocess.run([*EGORAY, *args, f"output={out}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    run = json.loads((out / "run.json").read_text())
    assert lines[0] == f"ingest: complete -> {out}"
    assert len(lines) == 1 + len(run["stages"]) + 2  # the header, a line per stage, shards, the log
    assert lines[-1].startswith(f"  log: {out}/_logs/ingest-") and done.stderr == ""
    text = next((out / "_logs").glob("ingest-*.log")).read_text()
    assert "Connected to Ray cluster" in text and "ingest: complete" in text

    verbose = subprocess.run([*EGORAY, *args, f"output={tmp_path / 'v'}", "--verbose"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "Connected to Ray cluster" in verbose.stderr
    assert not (tmp_path / "v" / "_logs").exists()


def test_help_describes_the_program_in_a_user_s_words():
    done = subprocess.run([*EGORAY, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "Egocentric video-language research jobs on Ray" in done.stdout and "``" not in done.stdout


def test_a_streaming_job_shows_one_progress_line_per_stage(ingested_small, tmp_path):
    """In a pipe: a stage's line when it changed (at most every 30 s) and its final line (in-process,
    on the session's Ray: the console is the same)."""
    out = tmp_path / "text_features"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["run", str(ROOT / "configs" / "demo" / "text_features.yaml"),
                     f"input={ingested_small / 'narrations'}", f"output={out}"]) == 0
    run = json.loads((out / "run.json").read_text())
    n, wall = run["stages"]["encode"]["in"], run["timings"]["wall_this_run"]
    lines = printed.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("  encode: ")]
    assert progress and progress[-1].startswith(f"  encode: {n} rows, ") and progress[-1].endswith(" s")
    assert len(progress) == len(set(progress)) <= 2 + wall / 30  # never the same line twice
    assert lines[0] == "[text_features] encode → " + str(out) and lines[-1].startswith(f"  log: {out}/_logs/")
