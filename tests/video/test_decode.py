"""Frame sampling with PyAV on real (synthetic) mp4s and on broken files."""

import math

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from egoray.video.decode import VideoError, iter_frames, probe, sample_times


def _video(synth_videos):
    return pq.read_table(synth_videos / "videos.parquet").to_pylist()[0]


@pytest.mark.parametrize(("duration", "rate", "n"), [(10.0, 1.875, 18), (10.0, 1.0, 10), (3.2, 2.0, 6),
                                                      (0.3, 1.0, 1), (0.0, 1.0, 1)])
def test_rate_sampling_counts(duration, rate, n):
    times = sample_times(5.0, 5.0 + duration, rate=rate)
    assert len(times) == n == max(1, math.floor(duration * rate))
    assert np.all(times >= 5.0) and np.all(times <= 5.0 + max(duration, 0))


def test_uniform_sampling():
    np.testing.assert_allclose(sample_times(0, 8, num_frames=4), [1, 3, 5, 7])
    with pytest.raises(ValueError):
        sample_times(0, 1)


def test_decoding_whole_video_and_window(synth_videos):
    v = _video(synth_videos)
    path = str(synth_videos / v["path"])
    info = probe(path)
    assert info.duration == pytest.approx(v["duration"], abs=0.15) and info.fps == pytest.approx(v["fps"])
    times = sample_times(0, info.duration, rate=1.0)
    frames = list(iter_frames(path, times, size=32))
    assert len(frames) == math.floor(info.duration)
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for _, f in frames)
    # the same window decoded after a seek gives the same frames as decoding from the start
    window = sample_times(4.0, 6.0, rate=2.0)
    late = [f for _, f in iter_frames(path, window)]
    full = {t: f for t, f in iter_frames(path, np.concatenate([times[:1], window]))}
    for t, f in zip(window, late, strict=True):
        np.testing.assert_array_equal(f, full[float(t)])
    # a window shorter than one sampling interval still yields one frame
    assert len(list(iter_frames(path, sample_times(2.0, 2.1, rate=1.0)))) == 1


def test_broken_files(tmp_path, synth_videos):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoError) as e:
        probe(str(garbage))
    assert e.value.reason == "unreadable"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError):
        list(iter_frames(str(empty), np.array([0.5])))
    truncated = tmp_path / "truncated.mp4"
    data = (synth_videos / _video(synth_videos)["path"]).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError):
        probe(str(truncated))
        list(iter_frames(str(truncated), np.array([0.5, 1.5])))
    audio_only = tmp_path / "audio.mp4"
    with av.open(str(audio_only), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoError) as e:
        probe(str(audio_only))
    assert e.value.reason == "no_video_stream"
