"""SIGKILL a running ``egoray run`` mid-job, event-driven: once some batches are committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

EGORAY = [sys.executable, "-m", "egoray"]


def committed(out: Path) -> list[Path]:
    """Ray Data's committed batches of a streaming job's output."""
    folder = out / "_checkpoint"
    return [p for p in folder.glob("*.parquet") if not p.name.endswith(".pending.parquet")] if folder.exists() else []


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver first (the crash under test), then whatever it started (its local Ray)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_mid_run(config: Any, tmp_path: Path, timeout: float = 300, command: list[str] = EGORAY) -> int:
    """Run ``config`` with ``egoray run`` in a new session; SIGKILL it as soon as a batch is
    committed. Returns the committed batches it left (asserts it was killed before finishing).

    The driver joins the test session's Ray (as a job's driver joins a cluster), which saves it
    starting one; its death ends its job there, with the job's actors and tasks.
    """
    import ray

    out = Path(config.output)
    cfg = tmp_path / f"{config.job}-killed.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "EGORAY_IO_CPUS": "0"}
    if ray.is_initialized():
        env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([*command, "run", str(cfg)], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not committed(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    running = proc.poll() is None
    kill_group(proc)
    assert running, f"{config.job} ended (code {proc.returncode}) before it could be killed mid-run"
    assert not (out / "run.json").exists()
    return len(committed(out))


def assert_no_leftovers(out: Path) -> None:
    """No temporary files and no uncommitted batch records after a resumed run."""
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files left behind"
    assert not list((out / "_checkpoint").glob("*.pending.parquet")), "uncommitted batches left behind"
    assert not (out / "_work").exists()
