"""``narrate`` with the VLM backend: a clip table (with a variable-frame-rate and an unreadable
video among the clips) through the tiny BLIP-2 with in-context examples, on a local Ray."""

import json
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from egoray import storage
from egoray.config import load_config
from egoray.pipelines import job_module
from egoray.pipelines.narrate_vlm import check_videos, load_pool
from egoray.video.frame_rate import frame_timing

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "demo" / "narrate_vlm.yaml")


def write_vfr_video(path: Path, frames: int = 40) -> None:
    """An H.264 mp4 whose frames are 20-80 ms apart (a variable-frame-rate camera)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 5 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += int(rng.choice([20, 33, 50, 80]))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _overrides(out: Path, clips: Path, tmp: Path, *extra: str) -> list[str]:
    return [f"input={clips}", f"videos={out / 'data' / 'videos'}", f"output={tmp / 'narrate_vlm'}",
            "video_splits=null", f"vlm.in_context.pool={out / 'narrations'}", *extra]


def test_vlm_narration_with_in_context_examples_and_bad_videos(demo_run, tmp_path):
    out = demo_run[0]
    write_vfr_video(tmp_path / "vfr.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    held_out = set(json.loads((out / "data" / "splits.json").read_text())["test"])
    clips = [c for c in storage.read_parquet(str(out / "data" / "clips.parquet")).to_pylist()
             if c["video_uid"] in held_out][:3]
    rows = [{"window_id": f"clip{i}", "video_uid": c["video_uid"], "t_start": c["t_start"], "t_end": c["t_end"],
             "path": str(next((out / "data" / "videos").glob(f"{c['video_uid']}.*")))} for i, c in enumerate(clips)]
    rows += [{"window_id": "vfr", "video_uid": "vfr", "t_start": 0.0, "t_end": 1.5, "path": str(tmp_path / "vfr.mp4")},
             {"window_id": "broken", "video_uid": "broken", "t_start": 0.0, "t_end": 1.0,
              "path": str(tmp_path / "broken.mp4")}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "clips.parquet")

    config = load_config(CONFIG, _overrides(out, tmp_path / "clips.parquet", tmp_path))
    manifest = job_module("narrate").run(config)
    assert manifest["status"] == "complete" and manifest["backend"] == "vlm"
    assert manifest["stages"]["narrate"] == {**manifest["stages"]["narrate"], "in": 5, "out": 4, "rejected": 1}
    rejects = storage.read_parquet(str(tmp_path / "narrate_vlm" / "rejects")).to_pylist()
    assert [(r["record_id"], r["reason"]) for r in rejects] == [("broken", "unreadable")]
    # the variable-frame-rate clip was narrated from a constant-rate copy
    copy = tmp_path / "narrate_vlm" / "cfr" / "vfr.mp4"
    assert not frame_timing(str(copy)).variable and frame_timing(str(tmp_path / "vfr.mp4")).variable
    captions = storage.read_parquet(str(tmp_path / "narrate_vlm" / "captions"))
    assert captions.num_rows == 4 * config.vlm.n
    assert set(captions["window_id"].to_pylist()) == {"clip0", "clip1", "clip2", "vfr"}
    assert all(0 < x < 20 for x in captions["nll"].to_pylist())
    total = pickle.loads((tmp_path / "narrate_vlm" / "total.pkl").read_bytes())
    assert len(total) == 4 and all(len(t[3]) == config.vlm.n for t in total)


def test_vfr_videos_are_rejected_unless_reencoded_and_pool_text_is_cleaned(demo_run, tmp_path):
    out = demo_run[0]
    write_vfr_video(tmp_path / "vfr.mp4")
    base = _overrides(out, out / "data" / "clips.parquet", tmp_path)
    config = load_config(CONFIG, [*base, "reencode_vfr=false"])
    usable, info = check_videos([str(tmp_path / "vfr.mp4")], config)
    assert usable == {} and info[str(tmp_path / "vfr.mp4")][0] == "variable_frame_rate"
    # in-context examples: training narrations only, tags cleaned, each with its video
    pool = load_pool(config)
    train = [n for n in storage.read_parquet(str(out / "narrations" / "narrations")).to_pylist()
             if n["split"] == "train"]
    assert len(pool) == len(train) and all(p["path"] for p in pool)
    assert not any("#" in p["text"] for p in pool) and any(p["text"].startswith("The camera wearer") for p in pool)


def test_a_folder_of_videos_gives_whole_video_or_dense_clips(demo_run, tmp_path):
    """Folder input: one clip per readable video (its probed length), or dense tiles; bad files
    keep their reason for the rejects."""
    from egoray.pipelines.narrate_vlm import _tile, list_clips

    out = demo_run[0]
    folder = tmp_path / "videos"
    folder.mkdir()
    good = sorted((out / "data" / "videos").glob("*.mp4"))[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.mp4").write_bytes(b"garbage" * 50)
    write_vfr_video(folder / "vfr.mp4")
    for mode, expect_windows in (("table", 1), ("dense", None)):
        config = load_config(CONFIG, [f"input={folder}", "videos=null", f"output={tmp_path / mode}",
                                      "video_splits=null", "vlm.in_context.k=0", "reencode_vfr=false",
                                      f"windows.mode={mode}", "windows.length=4", "windows.stride=4"])
        clips = list_clips(config)
        assert sorted(c["video_uid"] for c in clips) == sorted(["broken", "vfr", good.stem])
        assert all(c["t_start"] == 0.0 and c["t_end"] is None for c in clips)
        usable, info = check_videos([c["path"] for c in clips], config)
        assert info[str(folder / "broken.mp4")][0] == "unreadable"
        assert info[str(folder / "vfr.mp4")][0] == "variable_frame_rate"
        tiled = [c for c in _tile(clips, info, config) if c["video_uid"] == good.stem]
        duration = info[str(folder / good.name)][2]
        if expect_windows == 1:
            assert len(tiled) == 1 and tiled[0]["t_end"] == pytest.approx(duration)
        else:
            assert len(tiled) == int(duration // 4) and all(c["t_end"] - c["t_start"] == pytest.approx(4) for c in tiled)
            assert len({c["window_id"] for c in tiled}) == len(tiled)
