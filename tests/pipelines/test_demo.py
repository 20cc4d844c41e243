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
    assert not (out / "qa").exists() and not (out / "rephrase").exists() and not (out / "captions").exists()
    for name in ("text_features", "video_features"):
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
    assert narrate["units"]["captions"] == narrate["stages"]["narrate"]["out"]  # one greedy caption each
    # every model job ran its stages on one actor pool for the whole job: one model load per actor
    for name in ("text_features", "video_features", "narrate"):
        job = json.loads((out / name / "run.json").read_text())
        assert job["model_loads"] == job["actors"], name
    captions = storage.read_parquet(str(out / "narrate" / "captions"))
    nll = captions["nll"].to_numpy()
    assert (nll > 0).all() and (nll < 50).all()
    total = pickle.loads((out / "narrate" / "total.pkl").read_bytes())
    assert len(total) == narrate["stages"]["narrate"]["out"]
    video_uid, start, end, texts, nlls = total[0]
    assert video_uid in held_out and start < end and len(texts) == len(nlls) == 1
    assert [(t[0], t[1]) for t in total] == sorted((t[0], t[1]) for t in total)


def test_demo_evaluates_and_writes_a_report(demo_run):
    out, printed = demo_run
    report = out / "eval" / "report.html"
    assert f"[demo] report: {report}" in printed
    run = json.loads((out / "eval" / "run.json").read_text())
    assert run["status"] == "complete"
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    # qa and captions were skipped, so the parts reading them were left out; everything else ran
    assert set(metrics) == {"retrieval", "zeroshot", "captioning-narrator", "gap"}
    r = metrics["retrieval"]
    assert r["t2v_R@1"] > 2 * r["chance_R@1"] and r["mir_avg_mAP"] > r["mir_avg_mAP_constant_scores"]
    z = metrics["zeroshot"]
    assert z["space"] == "dual_encoder" and z["top5"] > z["chance_top5"] and z["classes"] == 80
    narr = metrics["captioning-narrator"]
    assert narr["items"] == run["stages"]["captioning-narrator"]["out"] > 0 and 0 <= narr["BLEU-1"] <= 1
    # the narrator (pre-trained LM, trained cross-attention) beats a captioner blind to the video
    print("narrator CIDEr", narr["CIDEr"], "blind", narr["blind_CIDEr"])
    assert narr["CIDEr"] > 1.5 * narr["blind_CIDEr"] > 0, narr
    gap = metrics["gap"]
    assert set(gap) == {"dual_encoder"} and gap["dual_encoder"]["pairs"] == r["items"]
    plots = sorted(p.name for p in (out / "eval" / "plots").iterdir())
    assert plots == ["gap_dual_encoder_svd.png", "gap_dual_encoder_umap.png"]
    html = report.read_text()
    for needle in ("egoray report", "all 7 jobs complete", "t2v_R@1", "captioning-narrator", "BLEU-4",
                   "Narrator output", "Narrations (raw → cleaned) and summaries", "data:image/png;base64",
                   "duplicate_narration", "training (held-out, before → after)", "What the models learned",
                   "Video-blind baseline", "chance R@1 ="):
        assert needle in html, needle
    # every embedded picture decodes: headline, timeline, gap plots, a curve per training run and a
    # thumbnail strip per held-out clip in the grid (the narrator's, one clip per video first)
    from tests.html_images import decoded_images

    alts = [alt for alt, _ in decoded_images(html)]
    assert {"headline metrics", "timeline of the jobs and their stages", "gap_dual_encoder_svd.png",
            "gap_dual_encoder_umap.png", "training curves of dual_encoder", "training curves of narrator"} <= set(alts)
    held_out_videos = {v for s in ("val", "test") for v in json.loads((out / "data" / "splits.json").read_text())[s]}
    strips = [a for a in alts if a.startswith("frames of ")]
    assert len(strips) == min(8, narr["items"]) and {a.removeprefix("frames of ") for a in strips} == held_out_videos


def test_eval_leaves_out_what_skipped_steps_would_have_written():
    from egoray.pipelines import load_config
    from egoray.pipelines.demo import config_dir, eval_without_skipped

    config = load_config(str(config_dir() / "demo" / "eval.yaml"), [])
    assert [c.name for c in config.captioning] == ["narrator", "vlm", "vlm_untrained", "summaries"]
    # run_demo adds narrate_vlm_untrained to a skip holding train_vlm (narrate_vlm is the untrained VLM then)
    kept = eval_without_skipped(config, ("train_vlm", "narrate_vlm_untrained", "captions"))
    assert [c.name for c in kept.captioning] == ["narrator", "vlm"]
    assert kept.gap.sources == ["dual_encoder"] and kept.gap.captions is None and kept.mcq is not None
    assert eval_without_skipped(config, ("qa",)).mcq is None
