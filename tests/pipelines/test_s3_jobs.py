"""Jobs reading and writing s3:// against a local S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys

from egoray import storage
from egoray.pipelines import ingest, text_features, validate_config
from tests.conftest import ROOT


def test_ingest_then_text_features_on_s3(ray_session, synth_small, s3_server):
    src = "s3://egoray-test/jobs/narration.json"
    storage.write_bytes(src, (synth_small / "narration.json").read_bytes())
    storage.write_bytes("s3://egoray-test/jobs/splits.json", (synth_small / "splits.json").read_bytes())
    narr = "s3://egoray-test/jobs/narrations"
    ingest.run(validate_config({"job": "ingest", "input": src, "splits": "s3://egoray-test/jobs/splits.json",
                                "output": narr, "num_shards": 2}), overwrite=True)
    out = "s3://egoray-test/jobs/text_features"
    run = text_features.run(validate_config({
        "job": "text_features", "input": narr, "output": out,
        "encoder": {"kind": "sentence_transformers", "model": "tiny:sentence"}}), overwrite=True)
    n = storage.read_parquet(storage.join(narr, "narrations")).num_rows
    assert run["status"] == "complete" and run["units"]["texts"] == n
    table = storage.read_parquet(storage.join(out, "embeddings"))
    assert table.num_rows == n and set(table["id"].to_pylist()) == set(
        storage.read_parquet(storage.join(narr, "narrations"))["narration_id"].to_pylist())
    manifest = storage.read_json(storage.join(out, "run.json"))
    text = json.dumps(manifest)
    assert "testing" not in text.replace("egoray-test", "")  # no credentials in run.json


def test_missing_bucket_is_one_clear_line(ray_session, synth_small, s3_server, capsys):
    from egoray.cli import main

    code = main(["run", str(ROOT / "configs" / "demo" / "ingest.yaml"), f"input={synth_small / 'narration.json'}",
                 f"splits={synth_small / 'splits.json'}", "output=s3://no-such-bucket-egoray/out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("egoray: error:") and "s3://no-such-bucket-egoray" in err[0]


def test_refused_credentials_are_one_clear_line(synth_small, tmp_path):
    """A second S3 server that checks credentials (moto with IAM auth on) refuses ours."""
    import os
    import signal
    import time
    import urllib.request
    from pathlib import Path

    from tests.conftest import _free_port

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        out = subprocess.run(
            [sys.executable, "-m", "egoray", "run", str(ROOT / "configs" / "demo" / "ingest.yaml"),
             "input=s3://some-bucket/narration.json", f"splits={synth_small / 'splits.json'}",
             f"output={tmp_path / 'out'}"],
            env={**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "AKIAWRONG",
                 "AWS_SECRET_ACCESS_KEY": "wrong-secret"},
            capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("egoray: error:") and "s3://some-bucket/narration.json" in last
    assert "wrong-secret" not in out.stderr and "Traceback" not in out.stderr
