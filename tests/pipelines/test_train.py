"""Training jobs end to end on Ray Train (2 CPU workers, gloo) over real synthetic features."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from egoray import storage
from egoray.pipelines import job_module, load_config
from egoray.pipelines.demo import config_dir
from tests.same_training import assert_same_training, train_again

pytestmark = pytest.mark.slow


def _run(config_name: str, overrides: list[str]) -> dict:
    config = load_config(str(config_dir() / config_name), overrides)
    return job_module(config.job).run(config)


@pytest.fixture(scope="module")
def features(demo_run) -> Path:
    """The demo's outputs: narrations, video and text features, data/ (6 synthetic videos)."""
    return demo_run[0]


def _dual_encoder_overrides(root: Path, out: Path) -> list[str]:
    return [f"input={root}/narrations", f"output={out}", f"video_features={root}/video_features",
            f"text_features={root}/text_features", f"labels={root}/data/clips.parquet"]


def test_dual_encoder_zero2_learns_round_trips_and_resumes(features, tmp_path):
    """The demo trained the dual encoder with DeepSpeed ZeRO-2 on 2 CPU workers (its config)."""
    from egoray.pipelines.train_dual_encoder import PAIR_COLUMNS, eval_arrays, evaluate, load_dual_encoder
    from egoray.train.order import in_id_order
    from egoray.train.pairs import pairs_dataset

    out = features / "dual_encoder"
    overrides = _dual_encoder_overrides(features, out)
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["train"]["strategy"] == "deepspeed" and run["config"]["train"]["zero_stage"] == 2
    assert run["config"]["train"]["num_workers"] == 2
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

    # the exported model reproduces the reported held-out metrics on the held-out pairs it was
    # evaluated on (built per video by the workers into _work/pairs, kept for resumed runs)
    held_out = pairs_dataset(str(out / "_work" / "pairs"), ["val", "test"], PAIR_COLUMNS)
    data = eval_arrays(in_id_order(held_out.iter_batches(batch_size=None, batch_format="pyarrow"), 4096))
    assert len(data["eval_video"]) == pairs["eval"]
    again = evaluate(load_dual_encoder(str(out)), data)
    assert again["t2v_R@1"] == pytest.approx(final["t2v_R@1"])
    assert again["v2t_R@5_label"] == pytest.approx(final["v2t_R@5_label"])

    # the best held-out evaluation is exported next to the last, and says which it was
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "t2v_R@1" and best["mode"] == "max" and best == run["best"]
    assert best["value"] == pytest.approx(max(v for v in metrics["t2v_R@1"].to_pylist() if v is not None))
    assert best["value"] >= final["t2v_R@1"]
    assert evaluate(load_dual_encoder(str(out / "best")), data)["t2v_R@1"] == pytest.approx(best["value"])

    # the same config on the same inputs trains the same batches to the same weights
    train_again(out, tmp_path / "again")
    assert_same_training(out, tmp_path / "again")

    # raising the epochs of a finished run resumes from its last checkpoint and trains only the new ones
    rerun = _run("demo/train_dual_encoder.yaml", [*overrides, f"train.epochs={run['epochs'] + 2}"])
    assert rerun["resumed_from_epoch"] == run["epochs"] and rerun["epochs"] == run["epochs"] + 2
    assert rerun["steps"] == run["steps"] + 2 * run["steps_per_epoch"]
    per_epoch = run["examples_trained"] / run["epochs"]
    assert rerun["examples_trained"] == pytest.approx(run["examples_trained"] + 2 * per_epoch)

    # changed features are another run's input: refused like a changed config, before any work
    from egoray.runtime import OutputConflict

    index = sorted((features / "video_features" / "index").glob("*.parquet"))[0]
    stamp = index.stat()
    os.utime(index, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    try:
        with pytest.raises(OutputConflict, match="earlier version"):
            _run("demo/train_dual_encoder.yaml", [*overrides, f"train.epochs={run['epochs'] + 2}"])
    finally:
        os.utime(index, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


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


NARRATOR_EPOCHS, CHECKPOINT_STEPS, EVAL_STEPS = 3, 7, 20


def _narrator_overrides(features: Path, out: Path) -> list[str]:
    return [f"input={features}/narrations", f"output={out}", f"video_features={features}/video_features",
            f"train.epochs={NARRATOR_EPOCHS}", "train.batch_size=4", "train.checkpoint_every=100",
            f"train.checkpoint_every_steps={CHECKPOINT_STEPS}", f"train.eval_every_steps={EVAL_STEPS}",
            "train.schedule=cosine", "train.warmup_steps=5", "train.max_failures=2"]


@pytest.fixture(scope="module")
def narrator(features, tmp_path_factory) -> tuple[Path, dict, int]:
    """A narrator trained with step checkpoints (every 7 steps of 30, 10 per epoch: each is
    mid-epoch), one of its two workers SIGKILLed once the first checkpoint is registered."""
    out = tmp_path_factory.mktemp("narrator")
    overrides = _narrator_overrides(features, out)
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


def test_narrator_resumes_mid_epoch_from_a_step_checkpoint_after_a_killed_worker(narrator):
    out, run, killed = narrator
    assert killed, "no training worker was found to kill"
    per_epoch = run["steps_per_epoch"]
    assert per_epoch == 10  # 80 training narrations, 2 workers, batches of 4
    assert run["status"] == "complete" and run["epochs"] == NARRATOR_EPOCHS
    assert run["steps"] == NARRATOR_EPOCHS * per_epoch  # no step lost or repeated by the restart
    resumed = run["resumed_from_step"]
    assert resumed > 0 and resumed % CHECKPOINT_STEPS == 0 and resumed % per_epoch != 0  # mid-epoch
    assert run["final_metrics"]["eval_loss"] < run["initial_metrics"]["eval_loss"]
    assert run["final_metrics"]["loss"] < run["initial_metrics"]["eval_loss"]
    assert run["final_metrics"]["mean_abs_gate"] > 0  # the gates opened
    assert (out / "model" / "model.pt").exists()
    assert list((out / "train").glob("checkpoint_*"))


def test_a_narrator_resumed_mid_epoch_trains_what_an_uninterrupted_one_does(features, narrator, tmp_path):
    """The resumed run continued with exactly the rows the killed one had not trained on: an
    uninterrupted run of the same config makes the same evaluations and bit-identical weights."""
    out, run, _ = narrator
    _run("demo/train_narrator.yaml", _narrator_overrides(features, tmp_path / "whole"))
    assert_same_training(out, tmp_path / "whole", resumed_epoch=run["resumed_from_step"] // run["steps_per_epoch"] + 1)


def test_narrator_metrics_best_model_and_tensorboard(narrator):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from egoray.models.checkpoint import load_exported

    out, run, _ = narrator
    metrics = storage.read_parquet(str(out / "metrics")).to_pylist()
    steps = [m["step"] for m in metrics]
    total = run["steps"]
    # every epoch's end and every 20th step after the resume point (earlier step rows were in the
    # killed run's history only if a checkpoint carried them)
    assert set(range(0, total + 1, run["steps_per_epoch"])) <= set(steps)
    assert {s for s in range(EVAL_STEPS, total + 1, EVAL_STEPS) if s > run["resumed_from_step"]} <= set(steps)
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["metric"] == "eval_loss" and best["mode"] == "min"
    assert best["value"] <= min(m["eval_loss"] for m in metrics if m["eval_loss"] is not None) + 1e-9
    assert load_exported(str(out / "best"))["best"] == best

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, total + 1))  # the restart's repeats purged
    lr = [e.value for e in events.Scalars("train/lr")]
    assert lr[0] < lr[4] and lr[-1] < 0.5 * max(lr)  # warmup up, cosine down
    assert [e.step for e in events.Scalars("eval/eval_loss")][-1] == total
    assert events.Scalars("model/mean_abs_gate")[-1].value > 0


def test_narrate_dense_windows_of_unnarrated_time(features, narrator, tmp_path):
    """LaViLa's pseudo-narrations: 1 s windows tiling every video, less those holding one of the
    ingested narrations (windows.uncovered; the demo narrates every 1–4 s)."""
    model, _, _ = narrator
    out = tmp_path / "dense"
    run = _run("demo/narrate.yaml", [f"input={features}/video_features", f"output={out}", f"model={model}",
                                     "video_features=null", "video_splits=null", "windows.mode=dense",
                                     "windows.length=1", "windows.stride=1", f"windows.uncovered={features}/narrations",
                                     "sampling.n=1", "ray.in_process=true"])  # Ray adds nothing here
    index = storage.read_parquet(str(features / "video_features" / "index")).to_pylist()
    narrations = storage.read_parquet(str(features / "narrations" / "narrations")).to_pylist()
    tiles = [(r["key"], float(k), min(k + 1.0, r["n"] / r["fps"])) for r in index
             for k in range(int(np.ceil(max(r["n"] / r["fps"] - 1, 0) + 1e-9)) or 1)]
    expected = [t for t in tiles if not any(n["video_uid"] == t[0] and n["t_start"] <= t[2] and n["t_end"] >= t[1]
                                            for n in narrations)]
    assert 0 < len(expected) < len(tiles)
    assert run["stages"]["narrate"] == {"in": len(expected), "out": len(expected), "rejected": 0,
                                        "seconds": run["stages"]["narrate"]["seconds"]}
    captions = storage.read_parquet(str(out / "captions"))
    got = sorted((u, round(t, 6)) for u, t in zip(captions["video_uid"].to_pylist(), captions["t_start"].to_pylist(),
                                                  strict=True))
    assert got == sorted((t[0], round(t[1], 6)) for t in expected)
    assert (captions["t_end"].to_numpy() - captions["t_start"].to_numpy() <= 1 + 1e-9).all()


def test_narrate_killed_mid_run_with_two_actors_gives_the_one_actor_captions(features, tmp_path):
    """The demo's held-out clips narrated with 3 sampled captions each, by one actor; two actors,
    other batches and a SIGKILL of the driver mid-run give the same captions (each seeded by its
    window and sample)."""
    from tests.killing import assert_no_leftovers, kill_mid_run

    demo = json.loads((features / "narrate" / "run.json").read_text())["config"]
    sampled = {**demo, "sampling": {**demo["sampling"], "n": 3, "do_sample": True, "temperature": 0.7}}
    config = load_config(str(config_dir() / "demo/narrate.yaml"), [])
    one = type(config).model_validate({**sampled, "output": str(tmp_path / "n1"),  # the reference in process
                                       "ray": {**sampled["ray"], "in_process": True}})
    reference = job_module("narrate").run(one)
    config = type(config).model_validate({**sampled, "output": str(tmp_path / "n2"), "num_actors": 2,
                                          "cpus_per_actor": 0.5, "batch_size": 6, "rows_per_file": 2})
    assert kill_mid_run(config, tmp_path) >= 1
    run = job_module("narrate").run(config)
    assert run["stages"]["narrate"]["out"] == reference["stages"]["narrate"]["out"]
    assert run["units"]["captions"] == 3 * run["stages"]["narrate"]["out"]
    got = storage.read_parquet(str(tmp_path / "n2" / "captions")).to_pylist()
    want = {r["caption_id"]: r for r in storage.read_parquet(str(tmp_path / "n1" / "captions")).to_pylist()}
    assert len(got) == len({r["caption_id"] for r in got}) == len(want)
    for row in got:
        assert row["text"] == want[row["caption_id"]]["text"]
        assert row["nll"] == pytest.approx(want[row["caption_id"]]["nll"], abs=1e-4)
    assert (tmp_path / "n2" / "total.pkl").exists()
    assert_no_leftovers(tmp_path / "n2")


@pytest.fixture(scope="module")
def video_text(features, tmp_path_factory) -> tuple[Path, dict, int]:
    """The tiny video–text towers trained from the demo videos' frames, with pseudo-narrations of
    training windows in narrate's layout (captions/) mixed in, one of them of a missing video, and
    paraphrases of six training narrations in rephrase's layout (paraphrases/), plus one of a
    narration that is not there."""
    tmp = tmp_path_factory.mktemp("video_text")
    narr = storage.read_parquet(str(features / "narrations" / "narrations"))
    train_rows = narr.filter(pc.equal(narr["split"], "train")).to_pylist()[:8]
    pseudo = [{"caption_id": f"{r['narration_id']}#0", "text": r["text"].lower(), "video_uid": r["video_uid"],
               "t_start": r["t_start"], "t_end": r["t_end"]} for r in train_rows]
    pseudo.append({**pseudo[0], "caption_id": "lost#0", "video_uid": "no-such-video"})
    (tmp / "pseudo" / "captions").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(pseudo), tmp / "pseudo" / "captions" / "part-0000.parquet")
    paraphrases = [{"narration_id": r["narration_id"], "video_uid": r["video_uid"],
                    "paraphrases": [f"{r['text']} now", f"then {r['text']}"]} for r in train_rows[2:]]
    paraphrases.append({**paraphrases[0], "narration_id": "gone", "paraphrases": ["c waits"]})
    (tmp / "rephrased" / "paraphrases").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(paraphrases), tmp / "rephrased" / "paraphrases" / "part-0000.parquet")
    run = _run("demo/train_video_text.yaml", [f"input={features}/narrations", f"output={tmp / 'video_text'}",
                                               f"videos={features}/data/videos",
                                               f"labels={features}/data/clips.parquet",
                                               f"aux=[{{texts: {tmp / 'pseudo'}}}]",
                                               f"rephrased={tmp / 'rephrased'}"])
    return tmp / "video_text", run, len(pseudo)


def test_video_text_towers_learn_from_raw_frames(features, video_text, tmp_path):
    """LaViLa's dual encoder end to end: frames decoded by Ray Data workers from the demo videos,
    a tiny ViT in LaViLa's space–time transformer and its text tower, ZeRO-2 on 2 CPU workers."""
    from egoray.eval.retrieval import paired_retrieval_metrics
    from egoray.models.video_text import load_video_text
    from egoray.pipelines.video_features import read_features
    from egoray.stages.pairs import Labels, caption_codes
    from egoray.stages.video import from_npy
    from egoray.train.pairs import pairs_dataset

    out, run, n_pseudo = video_text
    pairs = run["pairs"]
    assert run["status"] == "complete" and pairs["in"] == pairs["out"] + pairs["rejected"]
    assert pairs["train"] + pairs["eval"] == pairs["out"] and pairs["eval"] > 0
    assert pairs["aux"] == n_pseudo - 1 and pairs["aux_rejected"] == 1
    assert pairs["with_paraphrases"] == 6  # drawn from per clip per epoch; the unknown narration's joined nothing
    final, initial = run["final_metrics"], run["initial_metrics"]
    # the pseudo pairs met at their own temperature, which learned: it starts at 0.07 like τ (a
    # frozen one stays there to float precision, ~1e-8) and moved on its own
    assert "aux_logit_scale" not in run["frozen"]
    assert abs(final["pseudo_temperature"] - 0.07) > 1e-4
    assert abs(final["pseudo_temperature"] - final["temperature"]) > 1e-4
    # held-out retrieval from raw frames, far above the chance levels computed from the clips (R@5
    # and per-label R@1: 40 held-out clips make instance R@1 move by 0.1 between epochs)
    n_eval = pairs["eval"]
    assert final["t2v_R@5"] >= 5 / n_eval + 0.3 and final["t2v_R@5"] > initial["t2v_R@5"] + 0.2
    assert final["t2v_R@1_label"] >= final["chance_R@1_label"] + 0.1
    assert run["best"]["value"] >= 4 * final["chance_R@1"]  # the kept model's instance R@1

    # the exported best towers give the recorded best R@1 again on the same held-out clips
    best = json.loads((out / "best" / "best.json").read_text())
    rows = pairs_dataset(str(out / "_work" / "clips"), ["val", "test"],
                         ["text", "frames", "verb_code", "noun_code"]).to_pandas()
    model = load_video_text(str(out / "best"))
    import torch

    with torch.no_grad():
        v = model.encode_video(model.preprocess(np.stack([from_npy(b) for b in rows["frames"]]))).numpy()
        t = model.encode_text(model.tokenize(list(rows["text"]))).numpy()
    again = paired_retrieval_metrics(v, t, rows["verb_code"].to_numpy(), rows["noun_code"].to_numpy(),
                              caption_codes(list(rows["text"])))
    assert again["t2v_R@1"] == pytest.approx(best["value"])

    # the towers serve text_features and video_features like any encoder: the held-out narrations'
    # texts and their windows' frames, embedded by the jobs, retrieve exactly as in training
    narr = storage.read_parquet(str(features / "narrations" / "narrations"))
    held = narr.filter(pc.is_in(narr["split"], value_set=pa.array(["val", "test"]))).to_pylist()
    table = tmp_path / "held_out_clips.parquet"
    actions = Labels(str(features / "data" / "clips.parquet"))

    def label(r: dict) -> str:
        verb, noun = actions.at(r["video_uid"], np.array([(r["t_start"] + r["t_end"]) / 2]))
        return f"{verb[0]} {noun[0]}"

    pq.write_table(pa.Table.from_pylist([
        {"clip_id": r["narration_id"], "video_uid": r["video_uid"], "path": str(features / "data" / "videos" /
                                                                               f"{r['video_uid']}.mp4"),
         "t_start": max(0.0, r["t_start"] - 1.0), "t_end": r["t_end"] + 1.0, "label": label(r)} for r in held]),
        table)
    _run("demo/video_features.yaml", [f"input={table}", f"output={tmp_path / 'vf'}", f"tower={out / 'best'}",
                                      "sampling.fps=null", "sampling.num_frames=4", "sampling.clip_mean=false",
                                      "ray.in_process=true"])
    _run("demo/text_features.yaml", [f"input={features}/narrations", f"output={tmp_path / 'tf'}",
                                     "encoder.kind=video_text", f"encoder.model={out / 'best'}", "encoder.normalize=false",
                                     "ray.in_process=true"])
    index = storage.read_parquet(str(tmp_path / "vf" / "index"))
    assert set(index["n"].to_pylist()) == {1}  # one feature per window
    texts = {r["id"]: r["embedding"] for r in storage.read_parquet(str(tmp_path / "tf" / "embeddings")).to_pylist()}
    ids = [r["narration_id"] for r in held]
    v2 = np.concatenate([read_features(str(tmp_path / "vf"), i) for i in ids])
    t2 = np.stack([np.asarray(texts[i], np.float32) for i in ids])
    served = paired_retrieval_metrics(v2, t2, np.full(len(ids), -1), np.full(len(ids), -1),
                               caption_codes([r["text"] for r in held]))
    assert served["t2v_R@1"] == pytest.approx(best["value"])

    # and the eval job scores them in their joint space (no dual encoder): the clip-keyed features
    # are each narration's own clip (LaViLa's and EK-100's protocol), so R@1 is the run's again
    _run("demo/eval.yaml", [f"input={tmp_path}", f"output={tmp_path / 'eval'}", "retrieval.model=null",
                            f"retrieval.narrations={features}/narrations", f"retrieval.video_features={tmp_path / 'vf'}",
                            f"retrieval.text_features={tmp_path / 'tf'}", f"retrieval.labels={features}/data/clips.parquet",
                            "zeroshot.model=null", f"zeroshot.classes={features}/data/labels.txt",
                            f"zeroshot.text_features={tmp_path / 'tf'}", f"zeroshot.clips={table}",
                            f"zeroshot.video_features={tmp_path / 'vf'}", "zeroshot.video_splits=null",
                            "captioning=[]", "mcq=null", "gap=null", "report=false"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["retrieval"]["space"] == "raw" and metrics["retrieval"]["items"] == len(held)
    assert metrics["retrieval"]["t2v_R@1"] == pytest.approx(best["value"])
    zeroshot = metrics["zeroshot"]
    assert zeroshot["space"] == "raw" and zeroshot["clips"] == len(held)
    # class prompts were never trained on, yet the towers rank the clip's action high (0.25 here)
    assert zeroshot["top5"] >= 2 * zeroshot["chance_top5"]


def test_video_text_training_reproduces(video_text, tmp_path):
    """Frames decoded again, pseudo pairs mixed in again: the same batches, the same towers."""
    train_again(video_text[0], tmp_path / "again")
    assert_same_training(video_text[0], tmp_path / "again")


def test_narrator_on_the_video_tower_trains_and_narrates_from_frames(features, video_text, tmp_path):
    """LaViLa's narrator: it starts from the video–text run (init_from), attends to its frozen
    tower's space–time tokens over frames decoded by Ray Data workers, exports the tower with its
    own weights, and `narrate` decodes each window's frames the same way."""
    import torch

    from egoray.models.checkpoint import load_exported

    towers, _, _ = video_text
    out = tmp_path / "narrator"
    run = _run("demo/train_narrator.yaml", [f"input={features}/narrations", f"output={out}", "video_features=null",
                                             f"tower={towers / 'best'}", f"videos={features}/data/videos",
                                             "train.epochs=3", "train.batch_size=8"])
    tower_weights = {k: v for k, v in load_exported(str(towers / "best"))["state_dict"].items()
                     if k.startswith("video.")}
    assert run["status"] == "complete" and run["init_from"] == str(towers / "best")
    assert run["initialised"]["loaded"] == len(tower_weights)  # the video tower, none of the text tower
    pairs = run["pairs"]
    assert pairs["in"] == pairs["out"] + pairs["rejected"] and pairs["eval"] > 0
    # step 0 is the pre-trained LM alone (gates at zero), which already writes narrations: what the
    # tower's tokens add lowers the held-out loss below it
    assert run["final_metrics"]["eval_loss"] < run["initial_metrics"]["eval_loss"]
    assert run["final_metrics"]["mean_abs_gate"] > 0
    exported = load_exported(str(out))
    assert exported["config"]["tower"]["num_frames"] == 4
    for name, weight in tower_weights.items():  # frozen: exported as the tower run left them
        assert torch.equal(exported["state_dict"][name], weight), name

    narr = storage.read_parquet(str(features / "narrations" / "narrations"))
    held = narr.filter(pc.equal(narr["split"], "val")).to_pylist()[:6]
    windows = [{"window_id": r["narration_id"], "video_uid": r["video_uid"], "t_start": r["t_start"] - 1,
                "t_end": r["t_end"] + 1} for r in held]
    windows.append({**windows[0], "window_id": "lost", "video_uid": "no-such-video"})
    pq.write_table(pa.Table.from_pylist(windows), tmp_path / "windows.parquet")
    narrated = _run("demo/narrate.yaml", [f"input={tmp_path / 'windows.parquet'}", f"output={tmp_path / 'narrate'}",
                                          f"model={out}", "video_features=null", f"videos={features}/data/videos",
                                          "sampling.n=2", "sampling.do_sample=true", "ray.in_process=true"])
    assert narrated["stages"]["features"]["rejected"] == 1
    captions = storage.read_parquet(str(tmp_path / "narrate" / "captions"))
    assert captions.num_rows == 2 * len(held) and set(captions["window_id"].to_pylist()) == {w["window_id"] for w in
                                                                                               windows[:-1]}
    rejects = storage.read_parquet(str(tmp_path / "narrate" / "rejects")).to_pylist()
    assert [(r["record_id"], r["reason"]) for r in rejects] == [("lost", "no_video")]

    # scored in LaViLa's protocol: each window against its own narration (window id = narration id)
    from egoray.eval import sections

    scored = sections.captioning.compute(sections.CaptioningSection(
        name="lavila", kind="narrations", predictions=str(tmp_path / "narrate"),
        references=str(features / "narrations"), protocol="lavila"))
    assert scored.metrics["protocol"] == "lavila" and scored.metrics["items"] == len(held)
    assert scored.counts == {"in": len(held), "out": len(held), "rejected": 0}
    assert {s["reference"] for s in scored.samples} <= {r["text"] for r in held}


def test_total_pkl_in_lavilas_style_and_scores(features, tmp_path):
    """The demo's narrator captions as LaViLa's total.pkl: scores exp(mean entropy) instead of the
    NLL, texts in the #C C style; the default keeps the NLLs."""
    import pickle
    import shutil

    from egoray.data.lavila import lavila_style
    from egoray.stages.narrate import write_total_pkl

    shutil.copytree(features / "narrate" / "captions", tmp_path / "captions")
    captions = storage.read_parquet(str(tmp_path / "captions")).to_pylist()
    assert all(c["entropy"] is not None and c["entropy"] >= 0 and c["nll"] > 0 for c in captions)
    by_window: dict = {}
    for c in sorted(captions, key=lambda c: c["k"]):
        by_window.setdefault((c["video_uid"], c["t_start"], c["t_end"]), []).append(c)
    assert write_total_pkl(str(tmp_path), "lavila", "lavila") == len(by_window)
    for uid, t0, t1, texts, scores in pickle.loads((tmp_path / "total.pkl").read_bytes()):
        want = by_window[(uid, t0, t1)]
        assert texts == [lavila_style(c["text"]) for c in want]
        assert scores == pytest.approx([float(np.exp(c["entropy"])) for c in want])
    default = pickle.loads((features / "narrate" / "total.pkl").read_bytes())
    assert [s for *_, s in default] == [[c["nll"] for c in by_window[(u, a, b)]] for u, a, b, _, _ in default]
