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
from egoray.pipelines import job_module, load_config
from egoray.stages.vlm import FolderClips, check_video, load_pool
from egoray.video.decode import VideoError
from egoray.video.frame_rate import frame_timing
from tests.killing import assert_no_leftovers, kill_mid_run

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
            "video_splits=null", "vlm.in_context.k=2", f"vlm.in_context.pool={out / 'narrations'}", *extra]


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

    # the reference run in process; the killed two-actor run on Ray must equal it
    config = load_config(CONFIG, _overrides(out, tmp_path / "clips.parquet", tmp_path, "ray.in_process=true"))
    manifest = job_module("narrate").run(config)
    assert manifest["status"] == "complete" and manifest["backend"] == "vlm"
    assert manifest["stages"]["narrate"] == {**manifest["stages"]["narrate"], "in": 5, "out": 4, "rejected": 1}
    assert manifest["model_loads"] == {"narrate": 1}
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

    # two actors, SIGKILL of the driver mid-run, the same job again: the narrations of the
    # one-actor run (examples chosen per clip, every narration seeded by its clip and sample)
    two = config.model_copy(update={"output": str(tmp_path / "two"), "num_actors": 2, "cpus_per_actor": 0.5,
                                    "batch_size": 1, "rows_per_file": 1,
                                    "ray": config.ray.model_copy(update={"in_process": False})})
    assert kill_mid_run(two, tmp_path) >= 1
    again = job_module("narrate").run(two)
    assert again["stages"]["narrate"] == {**manifest["stages"]["narrate"], "seconds": again["stages"]["narrate"]["seconds"]}
    got = storage.read_parquet(str(tmp_path / "two" / "captions"))
    assert sorted(zip(got["caption_id"].to_pylist(), got["text"].to_pylist(), strict=True)) == \
        sorted(zip(captions["caption_id"].to_pylist(), captions["text"].to_pylist(), strict=True))
    assert_no_leftovers(tmp_path / "two")


def test_vfr_videos_are_rejected_unless_reencoded_and_pool_text_is_cleaned(demo_run, tmp_path):
    out = demo_run[0]
    write_vfr_video(tmp_path / "vfr.mp4")
    base = _overrides(out, out / "data" / "clips.parquet", tmp_path)
    config = load_config(CONFIG, [*base, "reencode_vfr=false"])
    with pytest.raises(VideoError) as e:
        check_video(str(tmp_path / "vfr.mp4"), reencode=False, tolerance=config.vfr_tolerance, cfr_dir=None)
    assert e.value.reason == "variable_frame_rate"
    copy, info = check_video(str(tmp_path / "vfr.mp4"), reencode=True, tolerance=config.vfr_tolerance,
                             cfr_dir=str(tmp_path / "cfr"))
    assert copy == str(tmp_path / "cfr" / "vfr.mp4") and not frame_timing(copy).variable and info.duration > 0
    assert info.fps > 0  # the copy's own probe: the rate its frames are taken at
    # in-context examples: training narrations only, tags cleaned, each with its video
    videos = {p.stem: str(p) for p in (out / "data" / "videos").glob("*.mp4")}
    pool = load_pool(str(out / "narrations"), config.vlm.in_context, videos)
    train = [n for n in storage.read_parquet(str(out / "narrations" / "narrations")).to_pylist()
             if n["split"] == "train"]
    assert len(pool) == len(train) and all(p["path"] for p in pool)
    assert not any("#" in p["text"] for p in pool) and any(p["text"].startswith("The camera wearer") for p in pool)


def test_a_folder_of_videos_gives_whole_video_or_dense_clips(demo_run, tmp_path):
    """Folder input: one clip per readable video (its probed length), or dense tiles; a video that
    cannot be probed keeps one clip, marked with its reason for the rejects."""
    from egoray.stages.base import REASON, pending
    from egoray.video.decode import probe

    out = demo_run[0]
    folder = tmp_path / "videos"
    folder.mkdir()
    good = sorted((out / "data" / "videos").glob("*.mp4"))[0]
    (folder / good.name).write_bytes(good.read_bytes())
    (folder / "broken.mp4").write_bytes(b"garbage" * 50)
    videos = pa.table({"video_uid": [good.stem, "broken"], "path": [str(folder / good.name), str(folder / "broken.mp4")]})
    duration = probe(str(folder / good.name)).duration
    whole = FolderClips(dense=False, length=4, stride=4)(videos)
    assert whole.num_rows == 2 and pending(whole).tolist() == [True, False]
    assert whole[REASON].to_pylist()[1] == "unreadable"
    assert whole["t_start"][0].as_py() == 0.0 and whole["t_end"][0].as_py() == pytest.approx(duration)
    dense = FolderClips(dense=True, length=4, stride=4)(videos)
    tiles = [r for r in dense.to_pylist() if r["video_uid"] == good.stem]
    assert len(tiles) == int(duration // 4) and all(r["t_end"] - r["t_start"] == pytest.approx(4) for r in tiles)
    assert len({r["window_id"] for r in tiles}) == len(tiles)
