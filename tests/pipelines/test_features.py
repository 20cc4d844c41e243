"""text_features, video_features and captions jobs end to end on a local Ray."""

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from egoray import storage
from egoray.data.labels import read_labels
from egoray.pipelines import captions, text_features, validate_config, video_features
from tests.conftest import FIXTURES
from tests.killing import assert_no_leftovers, kill_mid_run


def test_text_features_of_narrations(ingested_small, tmp_path):
    config = validate_config({"job": "text_features", "input": str(ingested_small), "output": str(tmp_path / "t"),
                              "encoder": {"model": "tiny:sentence", "normalize": True}, "batch_size": 16,
                              "rows_per_file": 20})
    manifest = text_features.run(config)
    narrations = storage.read_parquet(str(ingested_small / "narrations"))
    emb = storage.read_parquet(str(tmp_path / "t" / "embeddings"))
    assert manifest["stages"]["encode"] == {**manifest["stages"]["encode"], "in": narrations.num_rows,
                                            "out": narrations.num_rows, "rejected": 0}
    assert sorted(emb["id"].to_pylist()) == sorted(narrations["narration_id"].to_pylist())
    mat = np.array(emb["embedding"].to_pylist(), dtype=np.float32)
    assert mat.shape == (narrations.num_rows, 64)
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)
    # each embedding carries its narration's video, times and split (what training pairs need)
    by_id = {r["narration_id"]: r for r in narrations.to_pylist()}
    for row in emb.select(["id", "video_uid", "t_start", "split"]).to_pylist():
        assert (row["video_uid"], row["t_start"], row["split"]) == tuple(by_id[row["id"]][k] for k in
                                                                        ("video_uid", "t_start", "split"))
    # written from the workers, in several batches, counted and with one model load per actor
    assert manifest["batches"] >= 2 and manifest["model_loads"] == {"encode": 1}
    assert manifest["items"] == narrations.num_rows

    # the same plan in process, without Ray (egoray run --in-process): the same rows, vectors, counts
    local = text_features.run(config.model_copy(update={"output": str(tmp_path / "local"),
                                                        "ray": config.ray.model_copy(update={"in_process": True})}))
    assert local["stages"] == manifest["stages"] and local["items"] == manifest["items"]
    assert local["model_loads"] == {"encode": 1} and local["batches"] >= 2
    in_process = {r["id"]: r["embedding"] for r in storage.read_parquet(str(tmp_path / "local" / "embeddings")
                                                                          ).to_pylist()}
    assert len(in_process) == emb.num_rows
    for row in emb.to_pylist():
        np.testing.assert_allclose(in_process[row["id"]], row["embedding"], atol=1e-5)

    # SIGKILL of the driver mid-run, then the same job again: the rows of the uninterrupted run
    again = config.model_copy(update={"output": str(tmp_path / "killed")})
    assert kill_mid_run(again, tmp_path) >= 1
    resumed = text_features.run(again)
    assert resumed["stages"]["encode"]["in"] == narrations.num_rows and resumed["items_this_run"] < resumed["items"]
    got = storage.read_parquet(str(tmp_path / "killed" / "embeddings"))
    assert got.num_rows == len(set(got["id"].to_pylist())) == emb.num_rows  # no duplicates, nothing lost
    want = {r["id"]: r["embedding"] for r in emb.to_pylist()}
    for row in got.to_pylist():  # the same vectors (batches differ: padding may move the last bits)
        np.testing.assert_allclose(row["embedding"], want[row["id"]], atol=1e-5)
    assert_no_leftovers(tmp_path / "killed")


def test_kinetics_class_list_is_read_in_id_order():
    # the Kinetics JSON (name -> id) through the same reader as the Charades run below
    pairs = read_labels(str(FIXTURES / "labels" / "kinetics_classnames.json"))
    assert len(pairs) == 400 and len({label for _, label in pairs}) == 400
    assert not any('"' in label for _, label in pairs)


@pytest.mark.parametrize("labels", ["Charades_v1_classes.reconstructed.txt"])
def test_class_prompts_to_hdf5(labels, tmp_path, ray_session):
    templates = ["The person in this video is doing {label}", "{label}"]
    config = validate_config({"job": "text_features", "input": str(FIXTURES / "labels" / labels),
                              "output": str(tmp_path / "c"), "templates": templates, "storage": "hdf5",
                              "encoder": {"kind": "open_clip", "clip": {"name": "tiny-clip"}}, "rows_per_file": 100,
                              "ray": {"in_process": True}})
    manifest = text_features.run(config)
    n_classes = 157 if labels.endswith(".txt") else 400
    index = storage.read_parquet(str(tmp_path / "c" / "index"))
    assert index.num_rows == manifest["units"]["texts"] == 2 * n_classes
    for file in set(index["file"].to_pylist()):
        arrays = storage.read_hdf5_shard(str(tmp_path / "c" / file))
        ids = [x.decode() for x in arrays["ids"]]
        assert arrays["embeddings"].shape == (len(ids), 32)
        rows = index.filter(pa.compute.equal(index["file"], file)).to_pylist()
        assert [r["id"] for r in sorted(rows, key=lambda r: r["row"])] == ids
    if labels.endswith(".txt"):
        assert "c000:0" in index["id"].to_pylist()


def _video_config(src, out, **kw):
    return validate_config({"job": "video_features", "input": str(src), "output": str(out), "rows_per_file": 2,
                            "sampling": {"fps": 1.875, "clip_mean": True}, **kw})


def test_video_features(synth_videos, tmp_path, ray_session):
    src = tmp_path / "videos"
    shutil.copytree(synth_videos / "videos", src)
    (src / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (src / "empty.mkv").write_bytes(b"")
    from tests.video.test_decode import _write

    _write(src / "zero.mkv", "libx264", "matroska", n_frames=0)  # a valid container without frames
    out = tmp_path / "vf"
    # in process (Ray adds nothing to one actor's rows); the killed run below is on Ray
    manifest = video_features.run(_video_config(src, out, ray={"in_process": True}))
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
    # SIGKILL of the driver mid-run on Ray (two actors), the same job again: the in-process run's
    # arrays, each once
    again = tmp_path / "vf2"
    two = _video_config(src, again, rows_per_file=1, num_actors=2, cpus_per_actor=0.5)
    assert kill_mid_run(two, tmp_path) >= 1
    resumed = video_features.run(two)
    assert resumed["stages"]["decode_encode"] == {**c, "seconds": resumed["stages"]["decode_encode"]["seconds"]}
    got = storage.read_parquet(str(again / "index"))
    assert sorted(got["key"].to_pylist()) == sorted(r["key"] for r in index)  # no duplicates, nothing lost
    for v in videos:
        np.testing.assert_allclose(video_features.read_features(str(again), v["video_uid"]),
                                   video_features.read_features(str(out), v["video_uid"]), atol=1e-5)
    assert sorted(storage.read_parquet(str(again / "rejects"))["record_id"].to_pylist()) == ["corrupt", "empty", "zero"]
    assert_no_leftovers(again)


def test_clip_windows_from_a_table(synth_videos, tmp_path, ray_session):
    uid = pq.read_table(synth_videos / "videos.parquet")["video_uid"][0].as_py()
    table = pa.table({"video_uid": [uid, uid, uid], "path": [f"videos/{uid}.mp4"] * 3,
                      "t_start": [1.0, 3.0, 2.0], "t_end": [5.0, 3.2, 2.0]})
    pq.write_table(table, synth_videos / "windows.parquet")
    out = tmp_path / "clips"
    manifest = video_features.run(validate_config({
        "job": "video_features", "input": str(synth_videos / "windows.parquet"), "output": str(out),
        "sampling": {"num_frames": 4}, "ray": {"in_process": True}}))
    assert manifest["stages"]["decode_encode"]["out"] == 3
    index = {r["key"]: r for r in storage.read_parquet(str(out / "index")).to_pylist()}
    assert {r["n"] for r in index.values()} == {4}
    assert index[f"{uid}_1.000_5.000"]["t_end"] == 5.0


def test_captions_job(synth_videos, tmp_path, ray_session):
    out = tmp_path / "cap"
    config = validate_config({"job": "captions", "input": str(synth_videos), "output": str(out),
                              "sampling": {"fps": 0.5}, "caption": {"seq_len": 8},
                              "summary_params": {"max_new_tokens": 16}, "ray": {"in_process": True}})
    manifest = captions.run(config)  # in process: the killed run below is on Ray
    assert manifest["model_loads"] == {"caption": 1, "generate": 1, "embed_summary": 1}
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
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist() if (out / "rejects").exists() else []
    for r in rejects:
        assert r["stage"] == "summary" and json.loads(r["input"])["kept_captions"]
    # on Ray, two actors per stage, SIGKILL mid-run, the same job again: the captions and summaries
    # of the in-process run (CoCa sampled per video and frame, the summary per video and attempt)
    two = config.model_copy(update={"output": str(tmp_path / "cap2"), "num_actors": 2, "cpus_per_actor": 0.5,
                                    "rows_per_file": 1, "ray": config.ray.model_copy(update={"in_process": False})})
    assert kill_mid_run(two, tmp_path) >= 1
    captions.run(two)
    got = storage.read_parquet(str(tmp_path / "cap2" / "captions"))
    key = ["video_uid", "frame_captions", "kept_captions", "summary"]
    assert sorted(got.select(key).to_pylist(), key=lambda r: r["video_uid"]) == \
        sorted(table.select(key).to_pylist(), key=lambda r: r["video_uid"])
    assert_no_leftovers(tmp_path / "cap2")
    # the eval job's modality gap of this output: CoCa frame mean vs summary embedding
    from egoray.eval import sections

    gap = sections.gap.compute(sections.GapSection(sources=["captions"], captions=str(out), plots=["svd"]), None)
    assert gap.metrics["captions"]["pairs"] == table.num_rows and gap.metrics["captions"]["dim"] == 64
    assert list(gap.plots) == ["gap_captions_svd.png"]


def test_import_ego4d_features_then_export_one_hdf5(ray_session, tmp_path):
    """Ego4D's released per-video features (files written by torch) into our layout, read back
    exactly and pooled at 1.875 features/s; then the whole output as one HDF5 file that plain
    h5py opens by video uid (CLEP's and GroundVQA's loaders); a malformed file is rejected."""
    import h5py
    import torch

    from egoray.cli import main
    from egoray.features.windows import FeatureStore, pool
    from egoray.pipelines import import_features
    from egoray.pipelines.video_features import read_features

    src = tmp_path / "omnivore"
    src.mkdir()
    torch.manual_seed(0)
    tensors = {"v1": torch.randn(9, 6), "_yt-id": torch.randn(4, 6), "v3": torch.randn(1, 6)}
    for uid, t in tensors.items():
        torch.save(t, src / f"{uid}.pt")
    torch.save(torch.randn(6), src / "flat.pt")
    out = tmp_path / "features"
    run = import_features.run(validate_config({"job": "import_features", "input": str(src), "output": str(out),
                                               "model": "ego4d:omnivore_video_swinl", "rows_per_file": 2}))
    assert run["stages"]["load"]["in"] == 4 and run["stages"]["load"]["rejected"] == 1
    rejects = storage.read_parquet(str(out / "rejects")).to_pylist()
    assert [(r["record_id"], r["reason"]) for r in rejects] == [("flat", "unreadable")]
    for uid, t in tensors.items():
        np.testing.assert_array_equal(read_features(str(out), uid), t.numpy())
    video = FeatureStore(str(out)).get("v1")
    assert video.fps == 1.875 and video.duration == pytest.approx(9 / 1.875)
    # feature k covers [k / 1.875, (k + 1) / 1.875): 1.0–2.0 s touches features 1, 2 and 3 (Ego4D's convention)
    np.testing.assert_allclose(pool(video, np.array([1.0]), np.array([2.0]))[0], tensors["v1"][1:4].mean(0).numpy(),
                               rtol=1e-5, atol=1e-6)

    assert main(["export", "hdf5", str(out), str(tmp_path / "all.h5")]) == 0
    with h5py.File(tmp_path / "all.h5", "r") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for uid, t in tensors.items():
            np.testing.assert_array_equal(f[uid][:], t.numpy())
        assert f["v1"].attrs["fps"] == 1.875 and f["v1"].attrs["model"] == "ego4d:omnivore_video_swinl"
