"""text_features, video_features and captions jobs end to end on a local Ray."""

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from egoray import storage
from egoray.config import validate_config
from egoray.pipelines import captions, text_features, video_features
from tests.conftest import FIXTURES


def test_text_features_of_narrations(ingested_small, tmp_path):
    config = validate_config({"job": "text_features", "input": str(ingested_small), "output": str(tmp_path / "t"),
                              "encoder": {"model": "tiny:sentence", "normalize": True}, "num_shards": 3})
    manifest = text_features.run(config)
    narrations = storage.read_parquet(str(ingested_small / "narrations"))
    emb = storage.read_parquet(str(tmp_path / "t" / "embeddings"))
    assert manifest["stages"]["encode"] == {**manifest["stages"]["encode"], "in": narrations.num_rows,
                                            "out": narrations.num_rows, "rejected": 0}
    assert sorted(emb["id"].to_pylist()) == sorted(narrations["narration_id"].to_pylist())
    mat = np.array(emb["embedding"].to_pylist(), dtype=np.float32)
    assert mat.shape == (narrations.num_rows, 64)
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)


def test_kinetics_class_list_is_read_in_id_order():
    # the Kinetics JSON (name -> id) through the same reader as the Charades run below
    pairs = text_features.read_labels(str(FIXTURES / "labels" / "kinetics_classnames.json"))
    assert len(pairs) == 400 and len({label for _, label in pairs}) == 400
    assert not any('"' in label for _, label in pairs)


@pytest.mark.parametrize("labels", ["Charades_v1_classes.reconstructed.txt"])
def test_class_prompts_to_hdf5(labels, tmp_path, ray_session):
    templates = ["The person in this video is doing {label}", "{label}"]
    config = validate_config({"job": "text_features", "input": str(FIXTURES / "labels" / labels),
                              "output": str(tmp_path / "c"), "templates": templates, "storage": "hdf5",
                              "encoder": {"kind": "open_clip", "clip": {"name": "tiny-clip"}}, "num_shards": 2})
    manifest = text_features.run(config)
    n_classes = 157 if labels.endswith(".txt") else 400
    index = storage.read_parquet(str(tmp_path / "c" / "index"))
    assert index.num_rows == manifest["tables"]["index"] == 2 * n_classes
    for file in set(index["file"].to_pylist()):
        arrays = storage.read_hdf5_shard(str(tmp_path / "c" / file))
        ids = [x.decode() for x in arrays["ids"]]
        assert arrays["embeddings"].shape == (len(ids), 32)
        rows = index.filter(pa.compute.equal(index["file"], file)).to_pylist()
        assert [r["id"] for r in sorted(rows, key=lambda r: r["row"])] == ids
    if labels.endswith(".txt"):
        assert "c000:0" in index["id"].to_pylist()


def _video_config(src, out, **kw):
    return validate_config({"job": "video_features", "input": str(src), "output": str(out), "num_shards": 2,
                            "sampling": {"fps": 1.875, "clip_mean": True}, **kw})


def test_video_features(synth_videos, tmp_path, ray_session):
    src = tmp_path / "videos"
    shutil.copytree(synth_videos / "videos", src)
    (src / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (src / "empty.mkv").write_bytes(b"")
    from tests.video.test_decode import _write

    _write(src / "zero.mkv", "libx264", "matroska", n_frames=0)  # a valid container without frames
    out = tmp_path / "vf"
    manifest = video_features.run(_video_config(src, out))
    videos = pq.read_table(synth_videos / "videos.parquet").to_pylist()
    c = manifest["stages"]["decode_encode"]
    assert (c["in"], c["out"], c["rejected"]) == (len(videos) + 3, len(videos), 3)
    rejects = storage.read_parquet(str(out / "rejects"))
    assert sorted(rejects["record_id"].to_pylist()) == ["corrupt", "empty", "zero"]
    reasons = dict(zip(rejects["record_id"].to_pylist(), rejects["reason"].to_pylist(), strict=True))
    assert reasons["zero"] == "empty" and reasons["corrupt"] == "unreadable"
    index = storage.read_parquet(str(out / "index")).to_pylist()
    for v in videos:
        row = next(r for r in index if r["key"] == v["video_uid"])
        assert row["n"] == math.floor(v["duration"] * 1.875)
        feats = video_features.read_features(str(out), v["video_uid"])
        assert feats.shape == (row["n"], row["dim"]) == (row["n"], 32)
    means = storage.read_parquet(str(out / "clip_mean"))
    first = means.to_pylist()[0]
    np.testing.assert_allclose(first["embedding"], video_features.read_features(str(out), first["key"]).mean(0),
                               atol=1e-5)
    # deterministic: a second run gives the same arrays
    again = tmp_path / "vf2"
    video_features.run(_video_config(src, again))
    key = videos[0]["video_uid"]
    np.testing.assert_array_equal(video_features.read_features(str(again), key),
                                  video_features.read_features(str(out), key))


def test_clip_windows_from_a_table(synth_videos, tmp_path, ray_session):
    uid = pq.read_table(synth_videos / "videos.parquet")["video_uid"][0].as_py()
    table = pa.table({"video_uid": [uid, uid, uid], "path": [f"videos/{uid}.mp4"] * 3,
                      "t_start": [1.0, 3.0, 2.0], "t_end": [5.0, 3.2, 2.0]})
    pq.write_table(table, synth_videos / "windows.parquet")
    out = tmp_path / "clips"
    manifest = video_features.run(validate_config({
        "job": "video_features", "input": str(synth_videos / "windows.parquet"), "output": str(out),
        "sampling": {"num_frames": 4}, "num_shards": 1}))
    assert manifest["stages"]["decode_encode"]["out"] == 3
    index = {r["key"]: r for r in storage.read_parquet(str(out / "index")).to_pylist()}
    assert {r["n"] for r in index.values()} == {4}
    assert index[f"{uid}_1.000_5.000"]["t_end"] == 5.0


def test_captions_job(synth_videos, tmp_path, ray_session):
    out = tmp_path / "cap"
    config = validate_config({"job": "captions", "input": str(synth_videos), "output": str(out),
                              "sampling": {"fps": 0.5}, "caption": {"seq_len": 8},
                              "summary_params": {"max_new_tokens": 16}, "num_shards": 2})
    manifest = captions.run(config)
    videos = pq.read_table(synth_videos / "videos.parquet").to_pylist()
    assert manifest["stages"]["caption"]["in"] == len(videos) == manifest["stages"]["caption"]["out"]
    s = manifest["stages"]["summary"]
    assert s["in"] == s["out"] + s["rejected"]
    table = storage.read_parquet(str(out / "captions"))
    for row in table.to_pylist():
        v = next(v for v in videos if v["video_uid"] == row["video_uid"])
        assert len(row["frame_captions"]) == len(row["frame_times"]) == math.floor(v["duration"] * 0.5)
        kept = row["kept_captions"]
        assert kept and all(k in row["frame_captions"] for k in kept)
        positions = [row["frame_captions"].index(k) for k in kept]
        assert positions == sorted(positions)
        assert row["summary"] and len(row["image_embedding"]) == len(row["summary_embedding"]) == 64
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    for r in rejects:
        assert r["stage"] == "summary" and json.loads(r["input"])["kept_captions"]
    # the eval job's modality gap of this output: CoCa frame mean vs summary embedding
    from egoray.eval import sections

    gap = sections.gap(sections.GapSection(sources=["captions"], captions=str(out), plots=["svd"]), None)
    assert gap.metrics["captions"]["pairs"] == table.num_rows and gap.metrics["captions"]["dim"] == 64
    assert list(gap.plots) == ["gap_captions_svd.png"]
