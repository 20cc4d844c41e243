"""The ``eval`` job on the session demo's outputs: resuming, MCQ, EK-100 CSV relevancy, bad configs."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from egoray import storage
from egoray.config import ConfigError
from egoray.data.raw import InputError
from egoray.eval import sections
from egoray.pipelines import job_module, load_config

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "demo" / "eval.yaml")


def _pooled(tmp_path, section: str, **sections_config):
    """The per-video pooled input of one section, built by the eval job's Ray Data pass."""
    from egoray.pipelines.eval import Config, pooled_inputs

    config = Config(input=str(tmp_path), output=str(tmp_path / f"eval-{section}"), **sections_config)
    return config, pooled_inputs(config, section)


def test_rerun_resumes_finished_sections(demo_run, capsys):
    out = demo_run[0]
    # the demo's eval, run again with its own config: every section is already done
    run = json.loads((out / "eval" / "run.json").read_text())
    config = load_config(CONFIG, [])
    config = type(config).model_validate(run["config"])
    manifest = job_module("eval").run(config)
    printed = capsys.readouterr().out
    assert printed.count("done in an earlier run") == len(config.section_ids()) == 4
    assert manifest["shards"]["resumed"] == 4 and manifest["metrics"] == run["metrics"]
    assert manifest["stages"] == run["stages"]


def test_mcq_ranks_answers_with_the_dual_encoder(demo_run, tmp_path):
    out = demo_run[0]
    narrations = storage.read_parquet(str(out / "narrations" / "narrations")).to_pylist()
    held_out = [n for n in narrations if n["split"] in ("val", "test")][:6]
    others = [n["text"] for n in narrations if n["split"] == "train"]
    rows = [{"group_id": f"g{i}", "video_uid": n["video_uid"], "t_start": n["t_start"] - 1, "t_end": n["t_end"] + 1,
             "question": "What did the camera wearer do?", "answer": n["text"],
             "wrong_answers": others[3 * i: 3 * i + 3]} for i, n in enumerate(held_out)]
    rows.append({**rows[0], "group_id": "lost", "video_uid": "no-such-video"})
    (tmp_path / "qa" / "qa").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa" / "qa" / "part-0000.parquet")
    config, moments = _pooled(tmp_path, "mcq", mcq=sections.MCQSection(
        qa=str(tmp_path / "qa"), model=str(out / "dual_encoder"), video_features=str(out / "video_features"),
        text_features=str(out / "text_features")))
    result = sections.mcq.compute(config.mcq, moments)
    assert result.counts == {"in": 7, "out": 6, "rejected": 1}
    assert result.rejects[0]["reason"] == "no_video_features"
    assert result.metrics["questions"] == 6 and result.metrics["chance"] == 0.25
    assert 0 <= result.metrics["accuracy"] <= 1 and len(result.samples) == 6


def test_retrieval_with_ek100_style_relevancy_csv(demo_run, tmp_path):
    out = demo_run[0]
    config = load_config(CONFIG, [])
    base = config.retrieval.model_copy(update={
        "model": str(out / "dual_encoder"), "narrations": str(out / "narrations"),
        "video_features": str(out / "video_features"), "text_features": str(out / "text_features"),
        "labels": str(out / "data" / "clips.parquet")})
    _, pairs = _pooled(tmp_path, "retrieval", retrieval=base)
    plain = sections.retrieval.compute(base, pairs)
    # the held-out narrations written as an EK-100 annotation CSV (verb class, noun class set)
    narrations = storage.read_parquet(str(out / "narrations" / "narrations")).to_pylist()
    clips = storage.read_parquet(str(out / "data" / "clips.parquet")).to_pylist()
    verbs = {v: i for i, v in enumerate(sorted({c["verb"] for c in clips}))}
    nouns = {v: i for i, v in enumerate(sorted({c["noun"] for c in clips}))}
    lines = ["narration_id,narration,verb_class,all_noun_classes"]
    for n in narrations:
        if n["split"] not in ("val", "test"):
            continue
        clip = next(c for c in clips if c["video_uid"] == n["video_uid"] and c["t_start"] <= n["t_start"] <= c["t_end"])
        lines.append(f'{n["narration_id"]},"{n["text"]}",{verbs[clip["verb"]]},"[{nouns[clip["noun"]]}]"')
    (tmp_path / "ek.csv").write_text("\n".join(lines) + "\n")
    ek = sections.retrieval.compute(base.model_copy(update={"ek100": sections.EK100Relevancy(videos_csv=str(tmp_path / "ek.csv"))}),
                            pairs)
    m = ek.metrics
    assert 0 < m["ek100_avg_mAP"] <= 1 and 0 < m["ek100_avg_nDCG"] <= 1
    assert m["t2v_R@1"] == plain.metrics["t2v_R@1"]  # the same model and pairs
    # every narration is a video and a sentence here, with the same relevancy as the labels give,
    # except that repeated sentences are merged: mAP stays within reach of the label-based one
    assert abs(m["ek100_avg_mAP"] - plain.metrics["mir_avg_mAP"]) < 0.25

    # the official relevancy pickle (EK-100 ships the matrix pickled): the same MIR as the same
    # matrix given as .npy, and as the matrix computed from the CSV's classes
    import pickle

    import numpy as np

    from egoray.eval.relevancy import ek100_relevancy

    rows = [line.split(",", 1)[0] for line in lines[1:]]
    (tmp_path / "sentences.csv").write_text("narration_id,narration\n" + "".join(f'{r},"x"\n' for r in rows))
    computed = ek100_relevancy(str(tmp_path / "ek.csv"), str(tmp_path / "sentences.csv"))
    (tmp_path / "relevancy.pkl").write_bytes(pickle.dumps(computed.matrix.astype(np.float64)))
    np.save(tmp_path / "relevancy.npy", computed.matrix)
    results = {}
    for name in ("relevancy.pkl", "relevancy.npy", None):
        section = base.model_copy(update={"ek100": sections.EK100Relevancy(
            videos_csv=str(tmp_path / "ek.csv"), sentences_csv=str(tmp_path / "sentences.csv"),
            relevancy=str(tmp_path / name) if name else None)})
        results[name] = {k: v for k, v in sections.retrieval.compute(section, pairs).metrics.items() if k.startswith("ek100")}
    assert results["relevancy.pkl"] == results["relevancy.npy"] == results[None]
    assert results[None]["ek100_avg_mAP"] > 0
    np.save(tmp_path / "wrong.npy", computed.matrix[:, :-1])
    with pytest.raises(InputError, match="matrix, but"):
        sections.retrieval.compute(base.model_copy(update={"ek100": sections.EK100Relevancy(
            videos_csv=str(tmp_path / "ek.csv"), sentences_csv=str(tmp_path / "sentences.csv"),
            relevancy=str(tmp_path / "wrong.npy"))}), pairs)
    # EK-100's segments are exact: no widening unless asked; Ego4D's points get 1 s
    assert sections.retrieval_offset(section) == 0.0 and sections.retrieval_offset(base) == 1.0


def test_bad_eval_configs():
    with pytest.raises(ConfigError, match="at least one"):
        load_config(CONFIG, ["retrieval=null", "zeroshot=null", "captioning=[]", "mcq=null", "gap=null"])
    with pytest.raises(ConfigError, match="needs a retrieval section"):
        load_config(CONFIG, ["retrieval=null"])
    with pytest.raises(ConfigError, match="exactly one of classes"):
        load_config(CONFIG, ["zeroshot.class_prompts=x"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(CONFIG, ["captioning.5.name=x"])


def test_summaries_against_each_videos_human_summaries(tmp_path):
    """kind summaries: a captions output's summary per video vs the ingest output's summaries."""
    (tmp_path / "cap" / "captions").mkdir(parents=True)
    (tmp_path / "ingest" / "summaries").mkdir(parents=True)
    pq.write_table(pa.table({"video_uid": ["v1", "v2", "v3"],
                             "summary": ["C cooked pasta in the kitchen", "the camera wearer washed dishes", "x"]}),
                   tmp_path / "cap" / "captions" / "part-0000.parquet")
    pq.write_table(pa.table({"video_uid": ["v1", "v1", "v2"],
                             "text": ["The camera wearer cooked pasta in the kitchen", "someone made food",
                                      "The camera wearer washed dishes"]}),
                   tmp_path / "ingest" / "summaries" / "part-0000.parquet")
    result = sections.captioning.compute(sections.CaptioningSection(
        name="summaries", kind="summaries", predictions=str(tmp_path / "cap"), references=str(tmp_path / "ingest")))
    assert result.counts == {"in": 3, "out": 2, "rejected": 1}
    assert [(r["record_id"], r["reason"]) for r in result.rejects] == [("v3", "no_reference")]
    assert result.metrics["items"] == 2 and 0 < result.metrics["BLEU-1"] < 1 and result.metrics["ROUGE-L"] > 0.5
    # the blind baseline: every video has a prediction, so the most frequent of all human summaries
    # (ties: the first seen) is given for each video, and scored as the predictions are
    from egoray.eval.captioning import score_captions

    m = result.metrics
    assert m["blind_text"] == "The camera wearer cooked pasta in the kitchen"
    refs = {"v1": ["The camera wearer cooked pasta in the kitchen", "someone made food"],
            "v2": ["The camera wearer washed dishes"]}
    expected = score_captions(dict.fromkeys(refs, m["blind_text"]), refs)
    assert m["blind_CIDEr"] == pytest.approx(expected["CIDEr"]) and m["blind_BLEU-4"] == pytest.approx(expected["BLEU-4"])
    assert m["ROUGE-L"] > m["blind_ROUGE-L"]


def test_zeroshot_multilabel_clips_report_map(demo_run, tmp_path):
    """Clips labelled with a list of classes (Charades-Ego style) get mAP; unknown labels are rejected."""
    out = demo_run[0]
    clips = storage.read_parquet(str(out / "data" / "clips.parquet")).to_pylist()
    rows = [{"video_uid": c["video_uid"], "t_start": c["t_start"], "t_end": c["t_end"],
             "label": [c["label"], clips[(i + 1) % len(clips)]["label"]]} for i, c in enumerate(clips[:12])]
    rows.append({**rows[0], "label": ["juggle plates"]})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "clips.parquet")
    config, clips_pooled = _pooled(tmp_path, "zeroshot", zeroshot=sections.ZeroShotSection(
        classes=str(out / "data" / "labels.txt"), text_features=str(out / "text_features"),
        model=str(out / "dual_encoder"), clips=str(tmp_path / "clips.parquet"),
        video_features=str(out / "video_features")))
    result = sections.zeroshot.compute(config.zeroshot, clips_pooled)
    assert result.counts == {"in": 13, "out": 12, "rejected": 1}
    assert result.rejects[0]["reason"] == "unknown_label"
    m = result.metrics
    assert 0 < m["mAP"] <= 1 and 0 < m["chance_mAP"] < 1 and "top1" not in m


def test_egomcq_and_egtea_sections_on_the_demo(demo_run, tmp_path):
    """EgoMCQ and EGTEA files written from the demo's held-out data, scored by the eval job with
    the demo's dual encoder: every question and clip accounted for, a lost video rejected."""
    import json

    out = demo_run[0]
    every = storage.read_parquet(str(out / "narrations" / "narrations")).to_pylist()
    narrations = [n for n in every if n["split"] in ("val", "test")]
    by_video: dict = {}
    for n in every:
        by_video.setdefault(n["video_uid"], []).append(n)
    videos = sorted(by_video)
    assert len(videos) >= 4
    questions = {}
    for i, n in enumerate(narrations[:12]):
        same = [m for m in by_video[n["video_uid"]] if m["narration_id"] != n["narration_id"]][:3]
        others = [by_video[v][0] for v in videos if v != n["video_uid"]][:3]
        pool = same if i % 2 else others  # odd questions intra-video, even ones inter-video
        choices = [n, *pool]
        assert len(choices) == 4
        questions[str(i)] = {"query": {"clip_text": n["text"]}, "answer": 0, "types": 2 if i % 2 else 1,
                             "choices": {str(k): {"video_uid": c["video_uid"], "clip_start": c["t_start"] - 1,
                                                  "clip_end": c["t_end"] + 1, "clip_text": c["text"]}
                                         for k, c in enumerate(choices)}}
    lost = json.loads(json.dumps(questions["0"]))
    lost["choices"]["3"]["video_uid"] = "no-such-video"
    questions["99"] = lost
    (tmp_path / "egomcq.json").write_text(json.dumps(questions))
    clips = storage.read_parquet(str(out / "data" / "clips.parquet")).to_pylist()
    labels = sorted({c["label"] for c in clips})
    (tmp_path / "action_idx.txt").write_text("".join(f"{x.replace(' ', '_').title()} {i + 1}\n"
                                                     for i, x in enumerate(labels)))
    first = {v: next(c for c in clips if c["video_uid"] == v) for v in videos}
    (tmp_path / "test_split1.txt").write_text("".join(f"{v} {labels.index(first[v]['label']) + 1} 1 1\n"
                                                      for v in videos))
    base = load_config(CONFIG, [])
    config = type(base)(
        input=str(tmp_path), output=str(tmp_path / "eval"), report=False, ray=base.ray,
        egomcq=sections.EgoMCQSection(egomcq=str(tmp_path / "egomcq.json"), model=str(out / "dual_encoder"),
                                      video_features=str(out / "video_features"),
                                      text_features=str(out / "text_features")),
        egtea=sections.EGTEASection(classes=str(tmp_path / "action_idx.txt"), split=str(tmp_path / "test_split1.txt"),
                                    model=str(out / "dual_encoder"), video_features=str(out / "video_features"),
                                    text_features=str(out / "text_features")))
    run = job_module("eval").run(config)
    mcq, egtea = run["metrics"]["egomcq"], run["metrics"]["egtea"]
    assert mcq["questions"] == 12 and mcq["inter_video_questions"] == 6 and mcq["intra_video_questions"] == 6
    assert mcq["chance"] == 0.25 and 0 <= mcq["inter_video_accuracy"] <= 1
    assert run["stages"]["egomcq"]["rejected"] == 1
    rejects = storage.read_parquet(str(tmp_path / "eval" / "rejects")).to_pylist()
    assert [(r["record_id"], r["reason"]) for r in rejects if r["stage"] == "egomcq"] == [("99", "no_video_features")]
    # every whole video is a clip of its own (its key is the clip id); mean-class accuracy reported
    assert egtea["clips"] == len(videos) and egtea["classes"] == len(labels)
    assert 0 <= egtea["mean_class_accuracy"] <= 1 and egtea["chance_top1"] == 1 / len(labels)


def test_every_section_of_the_eval_config_is_a_registered_module():
    import typing

    from egoray.config import JobConfig
    from egoray.eval.metric_notes import metric_note
    from egoray.pipelines.eval import Config

    fields = {k: v for k, v in Config.model_fields.items() if k not in JobConfig.model_fields and k != "report"}
    assert list(fields) == list(sections.SECTIONS)  # the job's keys are the registry's, in its order
    for name, kind in sections.SECTIONS.items():
        annotation = fields[name].annotation
        assert kind.config in typing.get_args(annotation), (name, annotation)  # X | None, or list[X]
        assert kind.module.__name__ == f"egoray.eval.sections.{name}"
        assert callable(kind.module.compute) and callable(kind.module.note)
        # the report's line comes from the section's own module, not the fallback for unknown ones
        assert metric_note(name if name != "captioning" else "captioning-x", {}) == kind.note({})
    assert sections.kind_of("captioning-narrator") is sections.SECTIONS["captioning"]
    assert sections.kind_of("nonsense") is None


def test_a_missing_section_input_fails_before_any_section_runs(tmp_path):
    from egoray.config import urls_of
    from egoray.pipelines import eval as eval_job
    from egoray.pipelines.demo import STEPS
    from egoray.runtime import ShardLedger

    (step,) = [s for s in STEPS if s.key == "eval"]
    out, data = tmp_path / "out", tmp_path / "data"
    config = load_config(CONFIG, [o.format(out=out, data=data) for o in step.overrides])
    urls = {url for s in config.section_ids() for _, url in urls_of(config.section_config(s))}
    assert str(out / "qa") in urls and len(urls) > 8  # every section's inputs, from the demo's overrides
    for url in urls - {str(out / "qa")}:
        Path(url).mkdir(parents=True, exist_ok=True)
    with pytest.raises(InputError, match=f"^eval section mcq, qa: input not found: {out / 'qa'}$"):
        eval_job.plan(config)
    assert not (out / "eval").exists()
    # a section finished in an earlier run needs its inputs no more
    Path(ShardLedger(config.output).marker_url("mcq")).parent.mkdir(parents=True)
    Path(ShardLedger(config.output).marker_url("mcq")).write_text("{}")
    lines = eval_job.plan(config).describe()
    others = [u for s in config.section_ids() if s != "mcq" for _, u in urls_of(config.section_config(s))]
    assert lines[1] == f"{len(others)} input URL(s) of the sections still to do: found"
