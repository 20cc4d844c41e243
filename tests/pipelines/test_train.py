"""Training jobs end to end on Ray Train (2 CPU workers, gloo) over real synthetic features."""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from egoray import storage
from egoray.config import load_config
from egoray.pipelines import job_module
from egoray.pipelines.demo import config_dir

pytestmark = pytest.mark.slow


def _run(config_name: str, overrides: list[str]) -> dict:
    config = load_config(str(config_dir() / config_name), overrides)
    return job_module(config.job).run(config)


@pytest.fixture(scope="module")
def features(ray_session, tmp_path_factory) -> Path:
    """12 synthetic videos → narrations, per-time-step video features, narration text embeddings."""
    from egoray.data.synth import synthesize

    root = tmp_path_factory.mktemp("train_inputs")
    data = root / "data"
    synthesize(str(data), videos=12, seed=11)
    _run("demo/ingest.yaml", [f"input={data}/narration.json", f"splits={data}/splits.json",
                              f"output={root}/narrations"])
    _run("demo/video_features.yaml", [f"input={data}/videos", f"output={root}/video_features"])
    _run("demo/text_features.yaml", [f"input={root}/narrations", f"output={root}/text_features"])
    return root


def _dual_encoder_overrides(root: Path, out: Path) -> list[str]:
    return [f"input={root}/narrations", f"output={out}", f"video_features={root}/video_features",
            f"text_features={root}/text_features", f"labels={root}/data/clips.parquet"]


def test_dual_encoder_zero2_learns_round_trips_and_resumes(features, tmp_path):
    from egoray.pipelines.train_dual_encoder import build_data, evaluate
    from egoray.pipelines.train_dual_encoder import load_dual_encoder

    out = tmp_path / "dual"
    overrides = _dual_encoder_overrides(features, out)
    run = _run("demo/train_dual_encoder.yaml", overrides)  # DeepSpeed ZeRO-2, 2 workers
    assert run["config"]["train"]["strategy"] == "deepspeed" and run["config"]["train"]["zero_stage"] == 2
    assert run["status"] == "complete" and run["epochs"] == run["config"]["train"]["epochs"]
    pairs = run["pairs"]
    assert pairs["in"] == pairs["out"] + pairs["rejected"] and pairs["train"] + pairs["eval"] == pairs["out"]
    final, initial = run["final_metrics"], run["initial_metrics"]
    # well above the chance level of these held-out clips, and above the untrained heads
    assert final["t2v_R@1_label"] >= final["chance_R@1_label"] + 0.25
    assert final["t2v_R@1"] >= 4 * final["chance_R@1"]
    assert final["t2v_R@1_label"] > initial["t2v_R@1_label"] + 0.15
    metrics = storage.read_parquet(str(out / "metrics"))
    assert metrics["epoch"].to_pylist() == list(range(0, run["epochs"] + 1))

    # the exported model reproduces the reported held-out metrics
    config = load_config(str(config_dir() / "demo/train_dual_encoder.yaml"), overrides)
    data, _, _ = build_data(config)
    again = evaluate(load_dual_encoder(str(out)), data)
    assert again["t2v_R@1"] == pytest.approx(final["t2v_R@1"])
    assert again["v2t_R@5_label"] == pytest.approx(final["v2t_R@5_label"])

    # running the finished job again resumes from its last checkpoint and trains nothing more
    rerun = _run("demo/train_dual_encoder.yaml", overrides)
    assert rerun["resumed_from_epoch"] == run["epochs"]
    assert rerun["examples_trained"] == run["examples_trained"]
    assert rerun["final_metrics"]["t2v_R@1"] == pytest.approx(final["t2v_R@1"])


def _train_workers() -> list:
    """Ray Train worker processes of this test session's Ray (descendants of this process)."""
    import psutil

    found = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def narrator(features, tmp_path_factory) -> tuple[Path, dict, int]:
    """A narrator trained while one of its two workers is SIGKILLed after the first checkpoint."""
    out = tmp_path_factory.mktemp("narrator")
    overrides = [f"input={features}/narrations", f"output={out}", f"video_features={features}/video_features",
                 "train.epochs=30", "train.checkpoint_every=2", "train.max_failures=2"]
    result: dict = {}

    def target() -> None:
        try:
            result["run"] = _run("demo/train_narrator.yaml", overrides)
        except BaseException as e:  # surfaced by the test
            result["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    killed = 0
    deadline = time.time() + 300
    while thread.is_alive() and time.time() < deadline and not killed:
        if (out / "train" / "checkpoint_manager_snapshot.json").exists():  # a checkpoint is registered
            workers = _train_workers()
            if workers:
                workers[-1].send_signal(signal.SIGKILL)
                killed = workers[-1].pid
        time.sleep(0.2)
    thread.join(timeout=600)
    if "error" in result:
        raise result["error"]
    return out, result["run"], killed


def test_narrator_recovers_from_a_killed_worker_and_learns(narrator):
    out, run, killed = narrator
    assert killed, "no training worker was found to kill"
    assert run["status"] == "complete" and run["epochs"] == 30
    assert run["resumed_from_epoch"] >= 2  # the replacement group started from a checkpoint
    assert run["final_metrics"]["eval_loss"] < run["initial_metrics"]["eval_loss"]
    assert run["final_metrics"]["loss"] < run["initial_metrics"]["eval_loss"]
    assert run["final_metrics"]["mean_abs_gate"] > 0  # the gates opened
    assert (out / "model" / "model.pt").exists()
    assert list((out / "train").glob("checkpoint_*"))


def test_narrate_clip_windows(features, narrator, tmp_path):
    model, _, _ = narrator
    out = tmp_path / "narrate"
    clips = storage.read_parquet(str(features / "data" / "clips.parquet"))
    run = _run("demo/narrate.yaml", [f"input={features}/data/clips.parquet", f"output={out}", f"model={model}",
                                     f"video_features={features}/video_features", "sampling.n=3"])
    assert run["status"] == "complete"
    assert run["stages"]["narrate"]["in"] == clips.num_rows == run["stages"]["narrate"]["out"]
    captions = storage.read_parquet(str(out / "captions"))
    assert captions.num_rows == 3 * clips.num_rows
    nll = np.array(captions["nll"].to_pylist())
    assert np.isfinite(nll).all() and (nll > 0).all()
    total = pickle.loads((out / "total.pkl").read_bytes())
    assert len(total) == clips.num_rows
    video_uid, start, end, texts, nlls = total[0]
    assert isinstance(video_uid, str) and start < end and len(texts) == len(nlls) == 3
    assert [t[0] for t in total] == sorted(t[0] for t in total)


def test_narrate_dense_windows_and_missing_features(features, narrator, tmp_path):
    model, _, _ = narrator
    out = tmp_path / "dense"
    run = _run("demo/narrate.yaml", [f"input={features}/video_features", f"output={out}", f"model={model}",
                                     "video_features=null", "windows.mode=dense", "windows.length=5",
                                     "windows.stride=5", "sampling.n=1"])
    index = storage.read_parquet(str(features / "video_features" / "index"))
    expected = sum(int(np.ceil(max(n / fps - 5, 0) / 5 + 1e-9)) or 1 for n, fps in
                   zip(index["n"].to_pylist(), index["fps"].to_pylist()))
    assert run["stages"]["narrate"]["out"] == expected
    # a window table naming a video without features: rejected with its reason
    table = tmp_path / "windows.parquet"
    import pyarrow as pa

    storage.write_parquet(str(table), pa.table({"window_id": ["w1", "w2"], "video_uid": [index["video_uid"][0].as_py(),
                                                                                        "no-such-video"],
                                                 "t_start": [0.0, 0.0], "t_end": [2.0, 2.0]}))
    run = _run("demo/narrate.yaml", [f"input={table}", f"output={tmp_path / 'two'}", f"model={model}",
                                     f"video_features={features}/video_features"])
    assert run["stages"]["narrate"] == {"in": 2, "out": 1, "rejected": 1, "seconds": run["stages"]["narrate"]["seconds"]}
    rejects = storage.read_parquet(str(tmp_path / "two" / "rejects"))
    assert rejects["reason"].to_pylist() == ["no_video_features"]
