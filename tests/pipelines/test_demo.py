import json

from egoray import storage
from egoray.cli import main


def test_demo_runs_every_step(tmp_path, capsys, ray_session):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--videos", "3", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "narrations") in printed and str(out / "data") in printed
    synth = json.loads((out / "data" / "manifest.json").read_text())
    assert len(list((out / "data" / "videos").glob("*.mp4"))) == 3
    run = json.loads((out / "narrations" / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["stages"]["validate"]["in"] == synth["narrations"]
    narrations = storage.read_parquet(str(out / "narrations" / "narrations"))
    assert narrations.num_rows == run["tables"]["narrations"] > 0
    em = json.loads((out / "em_narrations" / "run.json").read_text())
    assert em["tables"]["narrations"] == synth["em_narrations"]
    qa = json.loads((out / "qa" / "run.json").read_text())
    assert qa["status"] == "complete" and qa["stages"]["question"]["in"] > 0
    assert len(json.loads((out / "qa" / "annotations.EgoTimeQA.json").read_text())) == qa["tables"]["qa"]
    rephrase = json.loads((out / "rephrase" / "run.json").read_text())
    assert rephrase["stages"]["paraphrase"]["in"] > 0
    for name in ("text_features", "class_prompts", "video_features", "captions"):
        assert json.loads((out / name / "run.json").read_text())["status"] == "complete", name
    vf = json.loads((out / "video_features" / "run.json").read_text())
    assert vf["stages"]["decode_encode"]["out"] == 3
