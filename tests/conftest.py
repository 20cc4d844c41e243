"""Shared fixtures: one local Ray per test run (2 CPUs) and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's controller polls its workers every 2 s (its default, sized for clusters), so every
# training run here waits up to that long to see its workers start, report and finish. Polled every
# 0.25 s a run is about 5 s shorter (train_vlm's demo config: 37 -> 32 s); what it does is the same.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="session", autouse=True)
def _logs_of_remote_outputs(tmp_path_factory):
    """Runs into s3:// log to EGORAY_LOG_DIR (else ./egoray-logs, here the repository): a temp dir."""
    os.environ["EGORAY_LOG_DIR"] = str(tmp_path_factory.mktemp("egoray-logs"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The local S3 server's address and fake credentials go into the environment before anything
# starts Ray, so that Ray's worker processes see them too, as they would on a configured machine.
S3_PORT = _free_port()
os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
})

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
EK100_CSV = FIXTURES / "ek100" / "EPIC_100_validation.csv"


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by every test that needs one; shut down at the end of the run."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """Six synthetic videos with annotations (no mp4s), seed 7."""
    from egoray.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth_small")
    synthesize(str(out), videos=6, seed=7, with_videos=False)
    return out


@pytest.fixture(scope="session")
def synth_videos(tmp_path_factory) -> Path:
    """Three synthetic videos with mp4 files, seed 3."""
    from egoray.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth_videos")
    synthesize(str(out), videos=3, seed=3, actions_per_video=6)
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 with a bucket ``egoray-test``; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="egoray-test")
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ingested_small(ray_session, synth_small, tmp_path_factory) -> Path:
    """The ingest output of ``synth_small`` (narrations of six videos)."""
    from egoray.pipelines import ingest, validate_config

    out = tmp_path_factory.mktemp("ingested_small")
    config = validate_config({"job": "ingest", "input": str(synth_small / "narration.json"),
                              "splits": str(synth_small / "splits.json"), "output": str(out), "num_shards": 2})
    ingest.run(config)
    return out


# steps whose jobs have their own end-to-end tests (test_ingest/qa/rephrase/features/train_vlm/narrate_vlm)
DEMO_SKIPPED = ("ingest_em", "qa", "rephrase", "class_prompts", "captions", "train_vlm", "narrate_vlm",
                "narrate_vlm_untrained", "train_video_text")


@pytest.fixture(scope="session")
def demo_run(ray_session, tmp_path_factory) -> tuple[Path, str]:
    """``egoray demo`` once for the session (6 videos): its output folder and what it printed.

    The demo is the CI's end-to-end run, and its outputs (narrations, features, trained models)
    are the inputs of the training tests, which would otherwise rebuild them.
    """
    import contextlib
    import io

    from egoray.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # the CI's smaller demo: steps whose jobs have their own end-to-end tests are left out
        assert main(["demo", "--out", str(out), "--videos", "6", "--seed", "4",
                     "--skip", *DEMO_SKIPPED]) == 0
    return out, printed.getvalue()
