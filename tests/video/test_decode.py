"""Frame sampling with PyAV on real (synthetic) mp4s and on broken files."""

import math

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from egoray.video.decode import VideoError, clip_frame_times, iter_frames, probe, sample_times


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


def test_window_frames_are_pytorchvideos_clip_subsampled(synth_videos):
    """EILEV's frames: pytorchvideo's ``get_clip(a, b)`` keeps the frames with a <= pts < b, then
    ``UniformTemporalSubsample(n)`` takes linspace(0, T - 1, n) truncated."""
    import torch

    from tests.pytorchvideo_reference import uniform_temporal_subsample

    v = _video(synth_videos)
    path = str(synth_videos / v["path"])
    info = probe(path)
    with av.open(path) as container:
        stream = container.streams.video[0]
        decoded = [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    for a, b, n in ((1.0, 9.0, 8), (0.25, 2.6, 8), (3.0, 3.2, 8), (2.0, 7.0, 3)):
        kept = [f for t, f in decoded if a - 1e-9 <= t < b - 1e-9]
        expected = uniform_temporal_subsample(torch.from_numpy(np.stack(kept)), n, temporal_dim=0).numpy()
        times = clip_frame_times(a, b, info.fps, n)
        ours = np.stack([f for _, f in iter_frames(path, times)])
        assert ours.shape == expected.shape and np.array_equal(ours, expected), (a, b, n)
    # 30 fps, [1, 9): frames 30..269 (240), linspace(0, 239, 8) truncated
    np.testing.assert_allclose(clip_frame_times(1.0, 9.0, 30.0, 8) * 30, [30, 64, 98, 132, 166, 200, 234, 269])
    with pytest.raises(VideoError) as e:  # a stream without a rate: the row's reject reason
        clip_frame_times(0.0, 8.0, 0.0, 8)
    assert e.value.reason == "no_frame_rate"


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


def _write(path, codec, fmt, n_frames, size=32, rate=5):
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width = s.height = size
        s.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        c.start_encoding()  # write the header even when no frame follows
        for k in range(n_frames):
            img = np.full((size, size, 3), 20 * k % 255, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize(("name", "codec", "fmt"), [("clip.webm", "libvpx-vp9", "webm"), ("clip.gif", "gif", "gif"),
                                                     ("clip.mkv", "libx264", "matroska")])
def test_other_containers(tmp_path, name, codec, fmt):
    path = tmp_path / name
    _write(path, codec, fmt, n_frames=10)
    info = probe(str(path))
    assert info.duration == pytest.approx(2.0, abs=0.25)
    frames = list(iter_frames(str(path), sample_times(0, info.duration, rate=2.0), size=16))
    assert len(frames) == math.floor(info.duration * 2.0) and frames[0][1].shape == (16, 16, 3)


@pytest.mark.parametrize(("name", "fmt", "reason"), [("zero.mkv", "matroska", "empty"),
                                                     ("zero.mp4", "mp4", "no_video_stream")])
def test_zero_frame_video(tmp_path, name, fmt, reason):
    path = tmp_path / name
    _write(path, "libx264", fmt, n_frames=0)
    assert path.stat().st_size > 0  # a real container, only without frames
    with pytest.raises(VideoError) as e:
        info = probe(str(path))
        list(iter_frames(str(path), sample_times(0, max(info.duration, 0.0), rate=1.0)))
    assert e.value.reason == reason


def test_seeking_on_short_keyframe_intervals_gives_the_sequential_frames(tmp_path):
    from egoray.video.decode import keyframe_times
    from egoray.video.render import FrameRenderer, encode_mp4

    renderer = FrameRenderer(32, 8, 10)
    rng = np.random.default_rng(0)
    frames = [renderer.frame(k / 10, k // 7 % 8, k // 11 % 10, rng) for k in range(120)]
    path = tmp_path / "short_gop.mp4"
    path.write_bytes(encode_mp4(frames, fps=10, size=32, gop=10))
    assert len(keyframe_times(str(path))) >= 10
    times = sample_times(0, 12.0, rate=0.5)  # sparse: one sample every 2 s, keyframes every 1 s
    seeking = [f for _, f in iter_frames(str(path), times)]
    with av.open(str(path)) as c:
        tb = float(c.streams.video[0].time_base)
        all_frames = [(float(f.pts * tb), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    for t, f in zip(times, seeking, strict=True):
        expected = next(img for ft, img in all_frames if ft + 1e-6 >= t)
        np.testing.assert_array_equal(f, expected)
