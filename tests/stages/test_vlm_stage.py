"""The VLM stage's handling of videos, without Ray: a remote video is downloaded once per actor
however many clips (and examples) come from it; point narrations become 8 s clips inside it."""

import json
import logging
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa

from egoray import storage
from egoray.models.vlm import VLMOptions
from egoray.stages.vlm import VLMStage


def _video_bytes(tmp_path, seconds: int = 10, fps: int = 10) -> bytes:
    path = tmp_path / "v.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), (2 * i) % 255, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def test_a_remote_video_is_downloaded_and_probed_once_per_actor(tmp_path, s3_server, caplog, monkeypatch):
    from egoray.video import decode

    url = "s3://egoray-test/vlm/videos/v.mp4"
    storage.write_bytes(url, _video_bytes(tmp_path))
    caplog.set_level(logging.INFO, logger="werkzeug")
    probed: list[str] = []
    real_probe = decode.probe
    monkeypatch.setattr(decode, "probe", lambda path: probed.append(path) or real_probe(path))

    def downloads() -> int:  # what the S3 server served: GETs of the video's contents
        return sum("GET /egoray-test/vlm/videos/v.mp4 " in r.getMessage() for r in caplog.records)

    stage = VLMStage(VLMOptions(model="tiny:blip2", num_frames=2, max_new_tokens=3))
    stage.setup()
    examples = json.dumps([{"path": url, "t_start": 1.0, "t_end": 1.0, "text": "#C C opens the door"}])
    rows = pa.table({"window_id": ["a", "b", "c"], "video_uid": ["v"] * 3, "path": [url] * 3,
                     "t_start": [0.5, 3.0, 9.5], "t_end": [2.0, 3.0, 9.5], "examples": [examples] * 3})
    out = stage.process(rows)
    assert downloads() == 1 and len(probed) == 1  # three clips and their example: one download, one probe
    assert [len(t) for t in out["texts"].to_pylist()] == [1, 1, 1]
    _, _, _, duration = stage.usable(url)
    assert duration == 10.0
    # a point narration near the end is narrated over the video's last 8 s
    assert stage.window(9.5, 9.5, duration) == (2.0, 10.0) and stage.window(3.0, 3.0, duration) == (0.0, 8.0)
    # the window's own frames as EILEV (and train_vlm) take them: [0.5, 2.0) at 10 fps holds
    # frames 5..19, linspace(0, 14, 2) → frames 5 and 19 (frame i is grey 2i)
    grey = stage._frames(url, 0.5, 2.0).reshape(2, -1).mean(axis=1)
    assert np.abs(grey - [10, 38]).max() < 1.5, grey  # neighbours are 2 apart; the codec shifts grey by 1
    assert downloads() == 1
