"""The ingest job end to end on a local Ray: synthetic Ego4D data, the pickle, real EK-100 rows."""

import json
import pickle

import pyarrow.compute as pc
import pytest

from egoray import storage
from egoray.data.raw import InputError
from egoray.pipelines import ingest, validate_config
from tests.conftest import EK100_CSV


def _config(**kw):
    return validate_config({"job": "ingest", **kw})


def _reconciles(manifest):
    stages = manifest["stages"]
    names = list(stages)
    for a, b in zip(names, names[1:], strict=False):
        assert stages[a]["out"] == stages[b]["in"]
    for c in stages.values():
        assert c["in"] == c["out"] + c["rejected"]
    total_rejected = sum(c["rejected"] for c in stages.values())
    assert stages[names[0]]["in"] == stages[names[-1]]["out"] + total_rejected
    assert manifest["tables"]["narrations"] == stages[names[-1]]["out"]
    assert manifest["tables"]["rejects"] == total_rejected


def test_synthetic_narration_json(ray_session, synth_small, tmp_path):
    out = str(tmp_path / "out")
    config = _config(input=str(synth_small / "narration.json"), output=out,
                     splits=str(synth_small / "splits.json"), num_shards=3)
    manifest = ingest.run(config)
    assert manifest["status"] == "complete"
    _reconciles(manifest)
    synth = json.loads((synth_small / "manifest.json").read_text())
    assert manifest["stages"]["validate"]["in"] == synth["narrations"]

    narrations = storage.read_parquet(storage.join(out, "narrations"))
    rejects = storage.read_parquet(storage.join(out, "rejects"))
    reasons = rejects["reason"].value_counts().to_pylist()
    assert {r["values"]: r["counts"] for r in reasons} == {k: v for k, v in synth["defects"].items() if v}
    ids = narrations["narration_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert not any("#" in t for t in narrations["text"].to_pylist())
    assert set(narrations["source"].to_pylist()) == {"ego4d"}
    splits = json.loads((synth_small / "splits.json").read_text())
    expected = {uid: name for name, uids in splits.items() for uid in uids}
    for row in narrations.select(["video_uid", "split"]).to_pylist():
        assert row["split"] == expected[row["video_uid"]]
    # Within a video and pass, the output is in time order although the input was not.
    for part in storage.listdir(storage.join(out, "narrations"), ".parquet"):
        t = storage.read_parquet(part)
        keys = list(zip(t["video_uid"].to_pylist(), t["pass"].to_pylist(), t["t_start"].to_pylist(), strict=True))
        assert keys == sorted(keys)
    summaries = storage.read_parquet(storage.join(out, "summaries"))
    assert summaries.num_rows == 2 * synth["videos"]
    run = storage.read_json(storage.join(out, "run.json"))
    assert run["shards"] == {"total": 3, "completed": 3, "resumed": 0, "written_now": 3, "missing": []}


def test_drop_held_out_videos_and_min_words(ray_session, synth_small, tmp_path):
    config = _config(input=str(synth_small / "narration.json"), output=str(tmp_path / "o"),
                     splits=str(synth_small / "splits.json"), num_shards=2,
                     clean={"drop_splits": ["val", "test"], "min_words": 6})
    manifest = ingest.run(config)
    _reconciles(manifest)
    narrations = storage.read_parquet(str(tmp_path / "o" / "narrations"))
    assert set(narrations["split"].to_pylist()) == {"train"}
    assert pc.min(pc.list_value_length(pc.utf8_split_whitespace(narrations["text"]))).as_py() >= 6
    assert manifest["stages"]["splits"]["rejected"] > 0
    assert manifest["stages"]["normalise"]["rejected"] > 0


def test_real_ek100_csv_and_pickle_together(ray_session, synth_small, tmp_path):
    config = _config(input=[str(EK100_CSV), str(synth_small / "em_train_narrations.pkl")],
                     output=str(tmp_path / "o"), num_shards=4)
    manifest = ingest.run(config)
    _reconciles(manifest)
    narrations = storage.read_parquet(str(tmp_path / "o" / "narrations"))
    ek = narrations.filter(pc.equal(narrations["source"], "ek100"))
    assert ek.num_rows == 9668
    assert set(ek["split"].to_pylist()) == {"val"}
    row = ek.filter(pc.equal(ek["narration_id"], "P01_11_0")).to_pylist()[0]
    assert (row["text"], row["verb"], row["noun"], row["t_end"]) == ("take plate", "take", "plate", 1.89)
    em = narrations.filter(pc.equal(narrations["source"], "em_pkl"))
    n_pkl = sum(len(c["narrations"]) for c in pickle.loads((synth_small / "em_train_narrations.pkl").read_bytes()))
    assert em.num_rows == n_pkl
    assert manifest["shards"]["total"] == 4


def test_duplicates_across_input_files_are_rejected(ray_session, synth_small, tmp_path):
    pkl = str(synth_small / "em_train_narrations.pkl")
    manifest = ingest.run(_config(input=[pkl, pkl], output=str(tmp_path / "o"), num_shards=3))
    _reconciles(manifest)
    n_pkl = sum(len(c["narrations"]) for c in pickle.loads((synth_small / "em_train_narrations.pkl").read_bytes()))
    assert manifest["tables"]["narrations"] == n_pkl
    rejects = storage.read_parquet(str(tmp_path / "o" / "rejects"))
    assert rejects.num_rows == n_pkl and set(rejects["reason"].to_pylist()) == {"duplicate_id"}


def test_changed_splits_file_is_not_resumed(ray_session, synth_small, tmp_path):
    splits = tmp_path / "splits.json"
    splits.write_text((synth_small / "splits.json").read_text())
    config = _config(input=str(synth_small / "narration.json"), splits=str(splits), output=str(tmp_path / "o"),
                     num_shards=2)
    ingest.run(config)
    splits.write_text('{"train": []}')
    from egoray.runtime import OutputConflict

    with pytest.raises(OutputConflict, match="earlier version"):
        ingest.run(config)


def test_resume_rewrites_only_missing_shards(ray_session, synth_small, tmp_path):
    out = tmp_path / "o"
    config = _config(input=str(synth_small / "narration.json"), output=str(out), num_shards=4)
    ingest.run(config)
    before = storage.read_parquet(str(out / "narrations")).sort_by("narration_id")
    # Simulate a crash after shard 2's table was written but before its marker.
    (out / "_shards" / "0002.json").unlink()
    (out / "narrations" / "part-0001.parquet").unlink()
    (out / "_shards" / "0001.json").unlink()
    manifest = ingest.run(config)
    assert manifest["shards"]["resumed"] == 2 and manifest["shards"]["written_now"] == 2
    after = storage.read_parquet(str(out / "narrations")).sort_by("narration_id")
    assert after.equals(before)
    _reconciles(manifest)


def test_input_errors(ray_session, tmp_path):
    with pytest.raises(InputError, match="input not found"):
        ingest.run(_config(input=str(tmp_path / "missing.json"), output=str(tmp_path / "o")))
    truncated = tmp_path / "narration.json"
    truncated.write_text('{"v": {"narration_pass_1": {"narrations": [{"timestamp_sec": 1.0, "narr')
    with pytest.raises(InputError, match="not valid JSON"):
        ingest.run(_config(input=str(truncated), output=str(tmp_path / "o2")))
    odd = tmp_path / "narrations.txt"
    odd.write_text("x")
    with pytest.raises(InputError, match="set format="):
        ingest.run(_config(input=str(odd), output=str(tmp_path / "o3")))


def test_s3_input_and_output(ray_session, synth_small, s3_server):
    src = "s3://egoray-test/ingest-in/narration.json"
    storage.write_bytes(src, (synth_small / "narration.json").read_bytes())
    out = "s3://egoray-test/ingest-out"
    manifest = ingest.run(_config(input=src, output=out, num_shards=2))
    _reconciles(manifest)
    assert storage.read_parquet(storage.join(out, "narrations")).num_rows == manifest["tables"]["narrations"]
    assert storage.read_json(storage.join(out, "run.json"))["status"] == "complete"


def test_lavila_metadata_pickles(ray_session, tmp_path):
    """LaViLa's narrations, rephraser and narrator pickles through ingest (the format told from the
    content): a row per text, bad records rejected with their reasons, in = out + rejected."""
    from tests.data.test_lavila import RECORDS

    src = tmp_path / "ego4d_train.rephraser.pkl"
    src.write_bytes(pickle.dumps(RECORDS))
    manifest = ingest.run(_config(input=str(src), output=str(tmp_path / "out"), num_shards=2))
    _reconciles(manifest)
    narrations = storage.read_parquet(str(tmp_path / "out" / "narrations"))
    assert sorted(narrations["narration_id"].to_pylist()) == [
        "v1:0", "v1:1#0", "v1:1#1", "v1:1#2", "v2:2#0", "v2:2#1"]
    assert set(narrations["source"].to_pylist()) == {"lavila", "lavila_rephraser", "lavila_narrator"}
    assert not any("#" in t for t in narrations["text"].to_pylist())
    rejects = storage.read_parquet(str(tmp_path / "out" / "rejects")).to_pylist()
    assert sorted((r["record_id"], r["reason"]) for r in rejects) == [
        ("record:8", "bad_record"), ("v2:3", "bad_timestamp"), ("v2:4", "empty_text"), ("v3:5", "bad_record"),
        ("v3:6", "bad_record"), ("v3:7", "unknown_pickle_class")]


def test_activitynet_captions_as_narrations_and_summaries(ray_session, tmp_path):
    """ActivityNet Captions (original JSON, and the Hugging Face rows as Parquet): a narration per
    sentence over its interval, the paragraph as the video's summary, a malformed video rejected;
    `egoray score captions` reads the Parquet rows as references by video id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from egoray.cli import main
    from tests.conftest import FIXTURES

    src = FIXTURES / "benchmarks" / "activitynet_captions_val_1.json"
    manifest = ingest.run(_config(input=str(src), output=str(tmp_path / "out"), num_shards=2))
    _reconciles(manifest)
    narrations = storage.read_parquet(str(tmp_path / "out" / "narrations")).to_pylist()
    assert sorted((n["narration_id"], n["t_start"]) for n in narrations) == [
        ("v_demo0000001:0", 0.83), ("v_demo0000001:1", 17.37), ("v_demo0000001:2", 56.26),
        ("v_demo0000002:0", 0.0), ("v_demo0000002:1", 10.0)]
    assert {n["source"] for n in narrations} == {"activitynet"}
    summaries = storage.read_parquet(str(tmp_path / "out" / "summaries")).to_pylist()
    assert sorted(s["video_uid"] for s in summaries) == ["v_demo0000001", "v_demo0000002"]  # not the rejected one
    rejects = storage.read_parquet(str(tmp_path / "out" / "rejects")).to_pylist()
    assert [(r["record_id"], r["reason"]) for r in rejects] == [("v_demo0000003:*", "bad_record")]

    rows = [{"video_id": "v_a", "video": "v_a.mp4", "caption": "A man rides a bike. He falls.", "duration": 9.0,
             "timestamps": [[0.0, 4.0], [4.0, 9.0]], "sentences": ["A man rides a bike.", "He falls."]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf.parquet")
    (tmp_path / "pred.json").write_text(json.dumps({"v_a": "A man rides a bike. He falls."}))
    assert main(["score", "captions", "--pred", str(tmp_path / "pred.json"), "--ref", str(tmp_path / "hf.parquet")]) == 0
    manifest = ingest.run(_config(input=str(tmp_path / "hf.parquet"), output=str(tmp_path / "hf"), num_shards=1))
    assert manifest["tables"]["narrations"] == 2


def test_ego4d_fho_main_narrated_actions_as_eilev_keeps_them(ray_session, tmp_path):
    """fho_main.json: valid, unrejected "#C C" actions, numbered per video as EILEV's frame paths
    (<video_uid>|<index>), with the structured verb and the object of change's noun (PNR frame)."""

    def action(text, t, valid=True, rejected=False, noun="cup_(mug)", frame="pnr_frame"):
        return {"narration_text": text, "narration_timestamp_sec": t, "structured_verb": "take_(pick,_grab)",
                "is_valid_action": valid, "is_rejected": rejected,
                "frames": [{"frame_type": frame, "boxes": [{"object_type": "object_of_change", "structured_noun": noun},
                                                           {"object_type": "left_hand", "structured_noun": None}]}]}

    fho = {"videos": [
        {"video_uid": "v1", "annotated_intervals": [
            {"narrated_actions": [action("#C C takes a cup", 3.5), action("#O man X takes a cup", 4.0),
                                  action("#C C drops it", 5.0, valid=False)]},
            {"narrated_actions": [action("#C C washes the cup", 9.0, frame="contact_frame"),
                                  action("#C C dries it", 12.0, rejected=True)]}]}]}
    (tmp_path / "fho_main.json").write_text(json.dumps(fho))
    manifest = ingest.run(_config(input=str(tmp_path / "fho_main.json"), output=str(tmp_path / "out"), num_shards=1))
    _reconciles(manifest)
    rows = {r["narration_id"]: r for r in storage.read_parquet(str(tmp_path / "out" / "narrations")).to_pylist()}
    assert sorted(rows) == ["v1|0", "v1|1"]
    assert rows["v1|0"]["verb"] == "take_(pick,_grab)" and rows["v1|0"]["noun"] == "cup_(mug)"
    assert rows["v1|0"]["t_start"] == rows["v1|0"]["t_end"] == 3.5
    assert rows["v1|1"]["noun"] is None  # no point-of-no-return frame
    reasons = sorted(r["reason"] for r in storage.read_parquet(str(tmp_path / "out" / "rejects")).to_pylist())
    assert reasons == ["invalid_action", "not_camera_wearer", "rejected_action"]
