"""Against a real Ray head (``ray start --head`` with its dashboard, token authentication on):
``egoray submit/status/logs/stop`` as a user runs them, and our counters in the metrics endpoint."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.ray_head import free_ports, ray_head, scrape_until, value

pytestmark = pytest.mark.slow
EGORAY = [sys.executable, "-m", "egoray"]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on 127.0.0.1 in its own process group, requiring a token we generate."""
    token = secrets.token_hex(16)
    temp = tmp_path_factory.mktemp("ray_head")
    with ray_head(temp, ["--num-cpus=2"], env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}) as started:
        yield {"address": started.dashboard, "token": token, "metrics": started.metrics, "env": {**started.env}}


def _egoray(args: list[str], env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*EGORAY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _client_env(head: dict, token: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env["HOME"] = head["env"].get("HOME", env.get("HOME", ""))
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _wait_status(job_id: str, head: dict, env: dict, want: set[str], timeout: float = 240) -> str:
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        out = _egoray(["status", job_id, "--address", head["address"]], env)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)["status"]
        if status in want:
            return status
        time.sleep(2)
    raise AssertionError(f"job {job_id} still {status}")


def _config(tmp_path: Path, synth: Path, name: str) -> Path:
    """An ingest config inside the repository (the working directory the cluster receives)."""
    config = yaml.safe_load((ROOT / "configs" / "demo" / "ingest.yaml").read_text())
    config.update({"input": str(synth / "narration.json"), "splits": str(synth / "splits.json"),
                   "output": str(tmp_path / name)})
    path = ROOT / "configs" / f".test-submit-{name}-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_submit_status_logs_and_metrics(head, synth_small, tmp_path, ray_session):
    # ray_session: an in-process Ray is running too, as in the full suite (ports must not clash)
    env = _client_env(head, head["token"])
    config = _config(tmp_path, synth_small, "ingest")
    try:
        out = _egoray(["submit", str(config), "num_shards=2", "--address", head["address"]], env)
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.strip().splitlines()[-1]
        status = _wait_status(job_id, head, env, {"SUCCEEDED", "FAILED", "STOPPED"})
    finally:
        config.unlink()
    logs = _egoray(["logs", job_id, "--address", head["address"]], env)
    assert status == "SUCCEEDED", logs.stdout[-3000:]
    assert logs.returncode == 0 and "ingest: complete" in logs.stdout
    followed = _egoray(["logs", job_id, "--follow", "--address", head["address"]], env, timeout=60)
    assert followed.returncode == 0 and "ingest: complete" in followed.stdout  # ends with the finished job
    run = json.loads((tmp_path / "ingest" / "run.json").read_text())
    assert run["status"] == "complete" and run["config"]["num_shards"] == 2
    # our counters reach the head's Prometheus endpoint
    labels = {"job": "ingest", "stage": "validate", "kind": "in"}
    scrape_until(head["metrics"], lambda f: value(f, "ray_egoray_records_total", **labels)
                 == run["stages"]["validate"]["in"])


def _submit(config: dict, name: str, head: dict, env: dict) -> str:
    """``egoray submit`` of ``config``, written inside the repository (the working directory the
    cluster receives) for the submission only; the submission id."""
    path = ROOT / "configs" / f".test-submit-{name}-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        submitted = _egoray(["submit", str(path), "--address", head["address"]], env)
        assert submitted.returncode == 0, submitted.stderr
    finally:
        path.unlink()
    return submitted.stdout.strip().splitlines()[-1]


def _api(head: dict, path: str) -> dict:
    request = urllib.request.Request(f"{head['address']}{path}", headers={"Authorization": f"Bearer {head['token']}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture(scope="module")
def streamed(head, ingested_small, tmp_path_factory) -> dict:
    """A text_features job submitted to the head and finished: its ids and its run.json."""
    out = tmp_path_factory.mktemp("streamed") / "text_features"
    env = _client_env(head, head["token"])
    submission = _submit({"job": "text_features", "input": str(ingested_small), "output": str(out),
                          "encoder": {"model": "tiny:sentence"}, "batch_size": 16}, "text-features", head, env)
    status = _wait_status(submission, head, env, {"SUCCEEDED", "FAILED", "STOPPED"})
    assert status == "SUCCEEDED", _egoray(["logs", submission, "--address", head["address"]], env).stdout[-3000:]
    return {"submission": submission, "run": json.loads((out / "run.json").read_text())}


def test_the_dashboard_lists_the_jobs_dataset_and_its_stage_by_name(head, streamed):
    """What Ray's dashboard shows of a job (its Jobs API and the Ray Data view's API): the job
    SUCCEEDED, its dataset is named after the job and its actor pool after our stage."""
    job = _api(head, f"/api/jobs/{streamed['submission']}")
    assert job["status"] == "SUCCEEDED" and job["metadata"]["egoray_job"] == "text_features"
    datasets = _api(head, f"/api/data/datasets/{job['job_id']}")["datasets"]
    assert len(datasets) == 1 and datasets[0]["dataset"].startswith("text_features_")
    assert datasets[0]["state"] == "FINISHED"
    operators = {o["name"]: o for o in datasets[0]["operators"]}
    assert "MapBatches(encode)" in operators, list(operators)
    assert operators["MapBatches(encode)"]["total_rows"] == streamed["run"]["stages"]["encode"]["out"]


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (apt install chromium)")
def test_a_browser_renders_the_jobs_dashboard_page(head, streamed, tmp_path):
    """Headless Chromium opens the job's page in Ray's dashboard (through a proxy that adds the
    token, as one in front of a dashboard does): the screenshot decodes and the page says what
    the job did."""
    import re

    from PIL import Image

    from tests.ray_head import token_proxy

    shot = tmp_path / "job.png"
    with token_proxy(head["address"], head["token"]) as proxy:
        url = f"{proxy}/#/jobs/{streamed['submission']}"
        browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                   "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]
        subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    with Image.open(shot) as image:
        assert image.size == (1400, 1000)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # a page, not a blank
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))
    encode = streamed["run"]["stages"]["encode"]
    assert "SUCCEEDED" in text and streamed["submission"] in text and "Ray Data Overview" in text
    # the driver's log as the page shows it: our stage summary
    assert re.search(rf"encode in {encode['in']} out {encode['out']} rejected {encode['rejected']}", text), text[-2000:]


def test_stop_a_running_job(head, synth_videos, tmp_path):
    env = _client_env(head, head["token"])
    config = yaml.safe_load((ROOT / "configs" / "demo" / "captions.yaml").read_text())
    config.update({"input": str(synth_videos / "videos"), "output": str(tmp_path / "captions")})
    job_id = _submit(config, "captions", head, env)
    assert _wait_status(job_id, head, env, {"RUNNING", "SUCCEEDED", "FAILED"}, timeout=120) == "RUNNING"
    stop = _egoray(["stop", job_id, "--address", head["address"]], env)
    assert stop.returncode == 0 and "stopping" in stop.stdout
    assert _wait_status(job_id, head, env, {"STOPPED", "SUCCEEDED", "FAILED"}, timeout=120) == "STOPPED"
    assert not (tmp_path / "captions" / "run.json").exists()


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_a_wrong_or_missing_token_is_one_clear_message(head, tmp_path, token):
    env = _client_env(head, token)
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
    out = _egoray(["status", "raysubmit_nothing", "--address", head["address"]], env)
    assert out.returncode == 1
    message = out.stderr.strip().splitlines()[-1]
    assert "requires an authentication token" in message
    assert ("was refused" if token else "is missing") in message
    assert "RAY_AUTH_TOKEN" in message and "RAY_AUTH_TOKEN_PATH" in message and "~/.ray/auth_token" in message
    assert "Traceback" not in out.stderr


def test_run_starts_its_own_ray_beside_a_head_or_its_leftovers(head, synth_small, tmp_path):
    """Without RAY_ADDRESS, `egoray run` starts its own local Ray: it neither joins a `ray start`
    head running on the machine nor trips over the address file a killed head left behind."""
    current = Path("/tmp/ray/ray_current_cluster")
    saved = current.read_text() if current.exists() else None
    current.parent.mkdir(parents=True, exist_ok=True)
    current.write_text("127.0.0.1:1")  # a head that is gone
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        out = _egoray(["run", str(ROOT / "configs" / "demo" / "ingest.yaml"), f"input={synth_small / 'narration.json'}",
                       f"output={tmp_path / 'o'}", "ray.num_cpus=1"], env)
    finally:
        if saved is None:
            current.unlink(missing_ok=True)
        else:
            current.write_text(saved)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"] == "complete"


def test_a_head_a_user_started_takes_jobs_with_the_token_ray_made(synth_small, tmp_path_factory, tmp_path):
    """`ray start --head` as a user types it, no token exported: Ray turns token authentication on
    from ~/.ray/auth_token, and `egoray submit` from the same account finds that token."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(16))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    with ray_head(tmp_path_factory.mktemp("user_head"), ["--num-cpus=2"], env=env) as started:
        with pytest.raises(urllib.error.HTTPError) as refused:  # token authentication is on
            urllib.request.urlopen(f"{started.dashboard}/api/jobs/", timeout=10)
        assert refused.value.code == 401
        head = {"address": started.dashboard, "env": started.env}
        client = _client_env(head, None) | {"HOME": str(home)}
        config = _config(tmp_path, synth_small, "user-head")
        try:
            out = _egoray(["submit", str(config), "--address", started.dashboard], client)
        finally:
            config.unlink()
        assert out.returncode == 0, out.stderr[-3000:]
        assert "no job agent yet" not in out.stderr
        job_id = out.stdout.strip().splitlines()[-1]
        assert _wait_status(job_id, head, client, {"SUCCEEDED", "FAILED", "STOPPED"}) == "SUCCEEDED"


def test_a_head_whose_job_agent_cannot_start_is_one_clear_message(tmp_path_factory, tmp_path):
    """Another Ray on the head machine holding the agent's port (here: a socket we hold) leaves the
    head without a job agent: submit waits a bounded time, then says what to do."""
    ports = free_ports()
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports["agent"]))
        held.listen()
        with ray_head(tmp_path_factory.mktemp("no_agent"), ["--num-cpus=1"], ports=ports) as started:
            client = _client_env({"env": started.env}, None) | {"EGORAY_SUBMIT_AGENT_WAIT_S": "1"}
            out = _egoray(["submit", str(ROOT / "configs" / "demo" / "ingest.yaml"), "--address",
                           started.dashboard], client)
    assert out.returncode == 1
    message = out.stderr.strip().splitlines()[-1]
    assert "job agent did not come up in " in message and "--dashboard-agent-listen-port" in message
    assert "Traceback" not in out.stderr
