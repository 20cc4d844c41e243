import json
import pickle

from egoray import storage
from tests.conftest import DEMO_SKIPPED


def test_demo_end_to_end(demo_run):
    out, printed = demo_run
    assert str(out / "narrations") in printed and str(out / "data") in printed
    synth = json.loads((out / "data" / "manifest.json").read_text())
    assert len(list((out / "data" / "videos").glob("*.mp4"))) == 6
    run = json.loads((out / "narrations" / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["stages"]["validate"]["in"] == synth["narrations"]
    narrations = storage.read_parquet(str(out / "narrations" / "narrations"))
    assert narrations.num_rows == run["tables"]["narrations"] > 0
    # the CI's smaller demo leaves out steps whose jobs have their own end-to-end tests
    assert sum(line.endswith(": skipped") for line in printed.splitlines()) == len(DEMO_SKIPPED)
    assert not (out / "qa").exists() and not (out / "rephrase").exists()
    for name in ("text_features", "video_features", "captions"):
        assert json.loads((out / name / "run.json").read_text())["status"] == "complete", name
    vf = json.loads((out / "video_features" / "run.json").read_text())
    assert vf["stages"]["decode_encode"]["out"] == 6
    dual = json.loads((out / "dual_encoder" / "run.json").read_text())
    assert dual["status"] == "complete" and dual["pairs"]["train"] > 0
    assert (out / "dual_encoder" / "model" / "model.pt").exists()
    narrator = json.loads((out / "narrator" / "run.json").read_text())
    assert narrator["final_metrics"]["loss"] < narrator["initial_metrics"]["eval_loss"]
    held_out = {v for s in ("val", "test") for v in json.loads((out / "data" / "splits.json").read_text())[s]}
    clips = storage.read_parquet(str(out / "data" / "clips.parquet")).to_pylist()
    narrate = json.loads((out / "narrate" / "run.json").read_text())
    assert narrate["stages"]["narrate"]["out"] == sum(c["video_uid"] in held_out for c in clips) > 0
    assert narrate["tables"]["captions"] == 5 * narrate["stages"]["narrate"]["out"]
    captions = storage.read_parquet(str(out / "narrate" / "captions"))
    nll = captions["nll"].to_numpy()
    assert (nll > 0).all() and (nll < 50).all()
    total = pickle.loads((out / "narrate" / "total.pkl").read_bytes())
    assert len(total) == narrate["stages"]["narrate"]["out"]
    video_uid, start, end, texts, nlls = total[0]
    assert video_uid in held_out and start < end and len(texts) == len(nlls) == 5
    assert [(t[0], t[1]) for t in total] == sorted((t[0], t[1]) for t in total)
