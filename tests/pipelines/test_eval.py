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
    result = sections.mcq(config.mcq, moments)
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
    plain = sections.retrieval(base, pairs)
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
    ek = sections.retrieval(base.model_copy(update={"ek100": sections.EK100Relevancy(videos_csv=str(tmp_path / "ek.csv"))}),
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
        results[name] = {k: v for k, v in sections.retrieval(section, pairs).metrics.items() if k.startswith("ek100")}
    assert results["relevancy.pkl"] == results["relevancy.npy"] == results[None]
    assert results[None]["ek100_avg_mAP"] > 0
    np.save(tmp_path / "wrong.npy", computed.matrix[:, :-1])
    with pytest.raises(InputError, match="matrix, but"):
        sections.retrieval(base.model_copy(update={"ek100": sections.EK100Relevancy(
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
    result = sections.captioning(sections.CaptioningSection(
        name="summaries", kind="summaries", predictions=str(tmp_path / "cap"), references=str(tmp_path / "ingest")))
    assert result.counts == {"in": 3, "out": 2, "rejected": 1}
    assert [(r["record_id"], r["reason"]) for r in result.rejects] == [("v3", "no_reference")]
    assert result.metrics["items"] == 2 and 0 < result.metrics["BLEU-1"] < 1 and result.metrics["ROUGE-L"] > 0.5


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
    result = sections.zeroshot(config.zeroshot, clips_pooled)
    assert result.counts == {"in": 13, "out": 12, "rejected": 1}
    assert result.rejects[0]["reason"] == "unknown_label"
    m = result.metrics
    assert 0 < m["mAP"] <= 1 and 0 < m["chance_mAP"] < 1 and "top1" not in m
