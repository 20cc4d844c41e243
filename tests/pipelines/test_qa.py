"""The qa job end to end with the tiny random-weight model on CPU."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from egoray import storage
from egoray.data.grouping import group_narrations
from egoray.data.narrations import load_narrations
from egoray.pipelines import qa, validate_config
from egoray.pipelines.qa import EXPORT_FILE
from tests.conftest import ROOT
from tests.killing import assert_no_leftovers, kill_mid_run

GROUPS = 8  # question groups of the job tests


def _config(ingested, out, **kw):
    base = {"job": "qa", "input": str(ingested), "output": str(out),
            "grouping": {"limit": GROUPS}, "engine": {"model": "tiny:llama", "batch_size": 8},
            "question_params": {"max_new_tokens": 160, "temperature": 1.0},
            "wrong_answer_params": {"max_new_tokens": 160, "temperature": 1.0}}
    base.update(kw)
    return validate_config(base)


def _ids(out):
    q = storage.read_parquet(str(out / "qa"))["group_id"].to_pylist()
    r = storage.read_parquet(str(out / "rejects"))["record_id"].to_pylist()
    return q, r


def test_grouping_rules(ingested_small):
    """GroundVQA's groups: 1–5 consecutive narrations of a clip spanning under 30 s (the last
    one's end minus the first one's start), the length drawn per clip from a seed."""
    narrations = load_narrations(str(ingested_small))
    groups = group_narrations(narrations, max_group=5, max_span=30.0, seed=0)
    assert sum(len(g) for g in groups["narration_ids"].to_pylist()) == narrations.num_rows
    lengths = [len(g) for g in groups["narration_ids"].to_pylist()]
    for g in groups.to_pylist():
        assert 1 <= len(g["narration_ids"]) <= 5
        assert g["t_end"] - g["t_start"] < 30.0 or len(g["narration_ids"]) == 1
    assert len(set(groups["group_id"].to_pylist())) == groups.num_rows
    assert len(set(lengths)) > 2  # drawn, not always the longest
    again = group_narrations(narrations.take(list(range(narrations.num_rows))[::-1]), 5, 30.0, seed=0)
    assert again.to_pylist() == groups.to_pylist()  # the same groups whatever the row order
    assert group_narrations(narrations, 5, 30.0, seed=1).to_pylist() != groups.to_pylist()
    longest = [len(g) for g in group_narrations(narrations, 5, 30.0, seed=None)["narration_ids"].to_pylist()]
    assert sum(longest) / len(longest) > sum(lengths) / len(lengths)


def test_groups_shrink_from_the_top_as_groundvqas_sample_narrations():
    """GroundVQA's ``_sample_narrations``: ``end = min(n, start + 5)``, then ``end -= 1`` while
    ``narrations[end-1].end - narrations[start].start >= 30``; ``end_sec`` is the last one's end."""
    def table(spans):
        return pa.table({"narration_id": [f"v_{k}" for k in range(len(spans))], "video_uid": ["v"] * len(spans),
                         "pass": pa.array([1] * len(spans), pa.int8()), "text": [f"t{k}" for k in range(len(spans))],
                         "t_start": [float(a) for a, _ in spans], "t_end": [float(b) for _, b in spans]})
    groups = group_narrations(table([(0, 10), (5, 35), (10, 20)]), 5, 30.0, seed=None).to_pylist()
    assert [(len(g["narration_ids"]), g["t_start"], g["t_end"]) for g in groups] == [(3, 0.0, 20.0)]
    # the last one reaching 30 s after the first's start is dropped; then the rest starts a group
    groups = group_narrations(table([(0, 10), (5, 12), (10, 30), (31, 33)]), 5, 30.0, seed=None).to_pylist()
    assert [(len(g["narration_ids"]), g["t_start"], g["t_end"]) for g in groups] == [(2, 0.0, 12.0), (2, 10.0, 33.0)]
    # only the last one's end counts: a long first narration does not stop a group
    groups = group_narrations(table([(0, 40), (1, 2)]), 5, 30.0, seed=None).to_pylist()
    assert [len(g["narration_ids"]) for g in groups] == [2]


def test_the_groundvqa_config_prompts_with_the_narrations_as_annotated():
    """GroundVQA's ``lm_input``: ``prompt + "<s>[INST] " + " ".join(narration_text) + "[/INST]\\n"``,
    the texts as the pickle holds them ("C picks ... ." with its period), not ingest's cleaned ones."""
    import yaml

    from egoray.llm.engine import GenerationParams
    from egoray.llm.steps import QuestionStep

    raw = ["C searches through the cabinet.", "C picks the tin from the cabinet."]
    narrations = pa.table({"narration_id": ["c_0", "c_1"], "video_uid": ["c", "c"], "pass": pa.array([1, 1], pa.int8()),
                           "text": ["The camera wearer searches through the cabinet",
                                    "The camera wearer picks the tin from the cabinet"],
                           "raw_text": raw, "t_start": [1.0, 3.0], "t_end": [2.0, 4.0]})
    group = group_narrations(narrations, 5, 30.0, seed=None).to_pylist()[0]
    assert group["raw_texts"] == raw
    config = validate_config(yaml.safe_load((ROOT / "configs" / "qa.yaml").read_text()))
    prompt = QuestionStep(GenerationParams(), config.prompts).prompt(group)
    few_shot = config.prompts.question.split("<s>[INST] {narrations}")[0].replace("{{", "{").replace("}}", "}")
    assert prompt == few_shot + "<s>[INST] " + " ".join(raw) + "[/INST]\n"


def test_egotimeqa_export_normalises_durations_as_groundvqa_merge_does():
    import pyarrow as pa

    from egoray.pipelines.qa import QA, export_egotimeqa, groups_of_video

    rows = [{"group_id": "g:a", "video_uid": "v", "t_start": 1.0, "t_end": 3.0, "question": "Q?", "answer": "a",
             "narrations": ["C cuts.", "C eats."], "wrong_answers": ["b", "c", "d"]},
            {"group_id": "g:b", "video_uid": "v", "t_start": 10.0, "t_end": 16.0, "question": "Q2?", "answer": "e",
             "narrations": ["C runs."], "wrong_answers": ["f", "g", "h"]}]
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in QA} for r in rows], schema=QA)
    plain = export_egotimeqa(table, 30.0, normalize=False)
    assert [(x["moment_start_frame"], x["moment_end_frame"]) for x in plain] == [(30.0, 90.0), (300.0, 480.0)]
    # merge.py: mean duration (2 + 6) / 2 = 4 s; durations 2/4 = 0.5 and 6/4 = 1.5 about centres 2 s and 13 s
    norm = export_egotimeqa(table, 30.0)
    assert [(x["moment_start_frame"], x["moment_end_frame"]) for x in norm] == [
        pytest.approx((1.75 * 30, 2.25 * 30)), pytest.approx((12.25 * 30, 13.75 * 30))]
    assert norm[0]["start_sec"] == 1.0 and norm[0]["end_sec"] == 3.0 and norm[0]["narrations"] == "C cuts. C eats."
    # a point narration is widened by point_window_sec around it (never before 0)
    points = pa.table({"narration_id": ["n1", "n2"], "video_uid": ["v", "v"], "pass": pa.array([1, 1], pa.int8()),
                       "text": ["x", "y"], "t_start": [1.0, 20.0], "t_end": [1.0, 20.0]})
    grouped = groups_of_video(points, 5, 30.0, None, 4.0).to_pylist()
    assert [(g["t_start"], g["t_end"]) for g in grouped] == [(0.0, 22.0)]


def test_qa_job(ingested_small, tmp_path):
    out = tmp_path / "qa"  # the reference run in process; the killed two-actor run on Ray must equal it
    manifest = qa.run(_config(ingested_small, out, ray={"in_process": True}))
    assert manifest["status"] == "complete"
    stages = manifest["stages"]
    assert stages["question"]["in"] == GROUPS == manifest["items"]
    assert stages["question"]["out"] == stages["wrong_answers"]["in"]
    for c in stages.values():
        assert c["in"] == c["out"] + c["rejected"]
    q, r = _ids(out)
    assert sorted(q + r) == sorted(set(q + r)) and len(q + r) == GROUPS  # every group once: output or rejects
    table = storage.read_parquet(str(out / "qa"))
    for row in table.to_pylist():
        assert row["question"].endswith("?") and len(row["question"].split()) <= 10
        assert 1 <= len(row["answer"].split()) <= 5
        assert len(row["wrong_answers"]) == 3 and len(set(row["wrong_answers"])) == 3
        assert row["prompt_version"] == "egotimeqa-v1" and row["model"] == "tiny:llama"
    export = json.loads((out / EXPORT_FILE).read_text())
    assert len(export) == table.num_rows > 0
    first = export[0]
    assert set(first) == {"video_id", "sample_id", "question", "answer", "start_sec", "end_sec", "narrations",
                          "moment_start_frame", "moment_end_frame", "wrong_answers"}
    row = table.filter(pc.equal(table["group_id"], first["sample_id"])).to_pylist()[0]
    assert (first["start_sec"], first["end_sec"]) == (row["t_start"], row["t_end"])
    centre = (int(row["t_start"] * 30) + int(row["t_end"] * 30)) / 2  # normalised about the moment's centre
    assert (first["moment_start_frame"] + first["moment_end_frame"]) / 2 == pytest.approx(centre)

    # a second run of a complete job does nothing
    again = qa.run(_config(ingested_small, out, ray={"in_process": True}))
    assert again == json.loads((out / "run.json").read_text())
    q, r = _ids(out)
    assert len(q + r) == len(set(q + r)) == GROUPS

    # two actors, other batches, SIGKILL of the driver mid-run and the same job again: the rows of
    # the uninterrupted one-actor run (every sample is seeded by its group, never by its batch)
    two = _config(ingested_small, tmp_path / "qa2", engine={"model": "tiny:llama", "batch_size": 3, "num_actors": 2},
                  rows_per_file=2)
    assert kill_mid_run(two, tmp_path) >= 1
    resumed = qa.run(two)
    assert resumed["items_this_run"] < resumed["items"] == GROUPS
    assert _rows(tmp_path / "qa2") == _rows(out)
    assert (tmp_path / "qa2" / EXPORT_FILE).read_text() == (out / EXPORT_FILE).read_text()
    assert_no_leftovers(tmp_path / "qa2")


def _rows(out):
    """Every group's outcome: its QA set, or its reject reason and raw output."""
    qa_rows = {r["group_id"]: (r["question"], r["answer"], tuple(r["wrong_answers"]))
               for r in storage.read_parquet(str(out / "qa")).to_pylist()}
    rejects = {r["record_id"]: (r["stage"], r["reason"], r["input"])
               for r in storage.read_parquet(str(out / "rejects")).to_pylist()} if (out / "rejects").exists() else {}
    return qa_rows, rejects


def test_failures_are_retried_then_rejected_with_raw_output(ingested_small, tmp_path):
    out = tmp_path / "qa"
    manifest = qa.run(_config(ingested_small, out, grouping={"limit": 4},
                              question_params={"max_new_tokens": 4}, limits={"max_attempts": 2}, ray={"in_process": True}))
    assert manifest["stages"]["question"] == {**manifest["stages"]["question"], "in": 4, "out": 0, "rejected": 4}
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    assert {r["reason"] for r in rejects} == {"invalid_json"}
    for r in rejects:
        kept = json.loads(r["input"])
        assert kept["attempts"] == 2 and kept["raw_output"].startswith("{")
        assert kept["narrations"]
    assert json.loads((out / EXPORT_FILE).read_text()) == []


def test_groundvqa_acceptance_decodes_unconstrained_and_tries_once(ingested_small, tmp_path):
    out = tmp_path / "qa"
    manifest = qa.run(_config(ingested_small, out, grouping={"limit": 4}, limits={"acceptance": "groundvqa"},
                              question_params={"max_new_tokens": 24, "temperature": 1.0}, ray={"in_process": True}))
    stages = manifest["stages"]
    assert stages["question"]["in"] == 4 == stages["question"]["out"] + stages["question"]["rejected"]
    q, r = _ids(out)
    assert sorted(q + r) == sorted(set(q + r)) and len(q + r) == 4
    for row in storage.read_parquet(str(out / "rejects")).to_pylist():
        kept = json.loads(row["input"])
        assert kept["attempts"] == 1  # one try, as GroundVQA's
        if row["stage"] == "question":
            # a random tiny model writes free text when nothing constrains it, which literal_eval refuses
            assert row["reason"] in {"not_a_literal", "missing_field", "empty_output"}
            assert not kept["raw_output"].startswith('{"question": "')


@pytest.mark.gpu
def test_vllm_engine_same_tables(ingested_small, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "qa"
    manifest = qa.run(_config(ingested_small, out, engine={"kind": "vllm", "model": "tiny:llama",
                                                          "gpus_per_actor": 1, "dtype": "float32"}))
    assert manifest["status"] == "complete"
    q, r = _ids(out)
    assert len(q + r) == len(set(q + r)) == GROUPS
    assert storage.read_parquet(str(out / "qa")).schema.equals(qa.QA)
