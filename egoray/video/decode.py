"""Frame sampling with PyAV, in-process and streaming: memory stays bounded whatever the length.

Sampling times for a window ``[t_start, t_end)`` of duration ``D``:

- at a rate ``r`` frames/s: ``n = max(1, floor(D * r))`` samples at ``t_start + (k + 0.5) / r``
  (a window shorter than one interval still gives one sample, at its middle);
- ``n`` uniform frames: at ``t_start + (k + 0.5) * D / n``.

Each sample is the first decoded frame whose presentation time reaches the sample time (the last
frame of the window if the stream ends first). Frames are converted and resized by FFmpeg's scaler
inside PyAV; nothing is written to disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


class VideoError(ValueError):
    """A video that cannot be used, with a short reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VideoInfo:
    duration: float
    fps: float
    width: int
    height: int


def probe(path: str) -> VideoInfo:
    """Duration, frame rate and size of the first video stream."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError("no_video_stream", "the file has no video stream")
            stream = container.streams.video[0]
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
            if not duration and stream.frames and rate:
                duration = stream.frames / rate
            return VideoInfo(duration=duration or 0.0, fps=rate, width=stream.codec_context.width,
                             height=stream.codec_context.height)
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError("unreadable", str(e)[:300]) from None


def sample_times(t_start: float, t_end: float, rate: float | None = None, num_frames: int | None = None) -> np.ndarray:
    """The sample times of a window (see the module docstring)."""
    duration = max(0.0, t_end - t_start)
    if (rate is None) == (num_frames is None):
        raise ValueError("give exactly one of rate and num_frames")
    if rate is not None:
        n = max(1, math.floor(duration * rate + 1e-9))
        return t_start + (np.arange(n) + 0.5) / rate if duration * rate >= 1 else np.array([t_start + duration / 2])
    return t_start + (np.arange(num_frames) + 0.5) * duration / num_frames


def iter_frames(path: str, times: np.ndarray, size: int | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (sample time, HxWx3 uint8 RGB frame) for each sample time, in order, streaming."""
    import av

    if len(times) == 0:
        return
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError("unreadable", str(e)[:300]) from None
    with container:
        if not container.streams.video:
            raise VideoError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else None
        if times[0] > 1.0 and tb:
            container.seek(int(max(0.0, times[0] - 1.0) / tb), stream=stream, backward=True)
        i, last = 0, None
        try:
            for frame in container.decode(stream):
                t = float(frame.pts * tb) if frame.pts is not None and tb else (frame.time or 0.0)
                while i < len(times) and t + 1e-6 >= times[i]:
                    yield float(times[i]), _rgb(frame, size)
                    i += 1
                if i >= len(times):
                    return
                last = frame
        except av.error.FFmpegError as e:
            if last is None:
                raise VideoError("corrupt", str(e)[:300]) from None
        if last is None:
            raise VideoError("empty", "no frame could be decoded")
        tail = _rgb(last, size)
        while i < len(times):  # the stream ended before the last sample times: repeat the last frame
            yield float(times[i]), tail
            i += 1


def _rgb(frame, size: int | None) -> np.ndarray:
    """RGB array; with ``size``, the shorter side scaled to ``size`` and the centre cropped square
    (what CLIP preprocessing does), the scaling done by FFmpeg."""
    if not size:
        return frame.to_ndarray(format="rgb24")
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    sw, sh = max(size, round(w * scale)), max(size, round(h * scale))
    img = frame.to_ndarray(format="rgb24", width=sw, height=sh)
    y, x = (sh - size) // 2, (sw - size) // 2
    return img[y:y + size, x:x + size]
