"""Frame sampling with PyAV, in-process and streaming: memory stays bounded whatever the length.

Sampling times for a window ``[t_start, t_end)`` of duration ``D``:

- at a rate ``r`` frames/s: ``n = max(1, floor(D * r))`` samples at ``t_start + (k + 0.5) / r``
  (a window shorter than one interval still gives one sample, at its middle);
- ``n`` uniform frames: at ``t_start + (k + 0.5) * D / n``;
- ``n`` of the window's own frames (:func:`clip_frame_times`, as EILEV): the frames of a
  ``fps`` stream presented in ``[t_start, t_end)``, subsampled at ``linspace(0, T - 1, n)``.

Each sample is the first decoded frame whose presentation time reaches the sample time (the last
frame of the window if the stream ends first). Frames are converted and resized by FFmpeg's scaler
inside PyAV; nothing is written to disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from egoray.errors import EgorayError


class VideoError(EgorayError, ValueError):
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
    except av.error.EOFError:
        raise VideoError("empty", "the file ends before any frame") from None
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


def clip_frame_times(t_start: float, t_end: float, fps: float, num_frames: int) -> np.ndarray:
    """The presentation times of ``num_frames`` of a window's own frames as EILEV takes them:
    pytorchvideo's ``get_clip`` keeps the frames presented in ``[t_start, t_end)`` (a constant
    ``fps`` stream from 0: frame ``k`` at ``k / fps``), ``UniformTemporalSubsample`` then takes
    indices ``linspace(0, T - 1, n)`` truncated (repeating frames when ``T < n``)."""
    import torch

    if not fps or fps <= 0:  # a reject reason for the row, not a crash of the batch
        raise VideoError("no_frame_rate", "the video stream declares no frame rate")
    first = math.ceil(t_start * fps - 1e-6)
    count = max(1, math.ceil(t_end * fps - 1e-6) - first)
    picks = torch.clamp(torch.linspace(0, count - 1, num_frames), 0, count - 1).long().numpy()
    return (first + picks) / fps


def keyframe_times(path: str) -> np.ndarray:
    """Presentation times of the video stream's keyframes (a demux pass: no decoding)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base or 0)
        times = [float(p.pts * tb) for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    return np.array(sorted(times))


def iter_frames(path: str, times: np.ndarray, size: int | None = None, squash: bool = False, crop: bool = True
                ) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (sample time, HxWx3 uint8 RGB frame) for each sample time, in order, streaming.

    Decoding is sequential, except that when the keyframe before the next sample lies ahead of the
    last decoded frame, the decoder seeks to it: sparse samples in videos with short keyframe
    intervals skip most of the decoding, and the frames are the same as decoding from the start.
    ``squash``: frames resized to ``size`` x ``size`` whatever their aspect (BLIP-2's processor)
    instead of scaled and centre-cropped; ``crop=False``: scaled (shorter side ``size``), not
    cropped — the whole frame, for a random crop later.
    """
    import av

    if len(times) == 0:
        return
    try:
        keys = keyframe_times(path)
        container = av.open(path)
    except av.error.EOFError:
        raise VideoError("empty", "the file ends before any frame") from None
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise VideoError("unreadable", str(e)[:300]) from None
    with container:
        if not container.streams.video:
            raise VideoError("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else None
        i, last, position = 0, None, -np.inf
        decoded, sought = None, None
        try:
            while i < len(times):
                j = int(np.searchsorted(keys, times[i] + 1e-6, side="right")) - 1
                k = float(keys[j]) if j >= 0 else None  # the keyframe at or before the next sample
                ahead = k is not None and tb and k > position + 1e-6 and k != sought
                if decoded is None or ahead:
                    if ahead and k > 0:
                        container.seek(int(k / tb), stream=stream, backward=True)
                        sought = k
                    decoded = container.decode(stream)
                frame = next(decoded, None)
                if frame is None:
                    break
                t = float(frame.pts * tb) if frame.pts is not None and tb else (frame.time or 0.0)
                position = t
                while i < len(times) and t + 1e-6 >= times[i]:
                    yield float(times[i]), _rgb(frame, size, squash, crop)
                    i += 1
                last = frame
        except av.error.FFmpegError as e:
            if last is None:
                raise VideoError("corrupt", str(e)[:300]) from None
        if last is None:
            raise VideoError("empty", "no frame could be decoded")
        tail = _rgb(last, size, squash, crop)
        while i < len(times):  # the stream ended before the last sample times: repeat the last frame
            yield float(times[i]), tail
            i += 1


def _rgb(frame, size: int | None, squash: bool = False, crop: bool = True) -> np.ndarray:
    """RGB array; with ``size``, the shorter side scaled to ``size`` and the centre cropped square
    (what CLIP preprocessing does) or, ``squash``, the whole frame resized to the square; the
    scaling done by FFmpeg."""
    if not size:
        return frame.to_ndarray(format="rgb24")
    if squash:
        return frame.to_ndarray(format="rgb24", width=size, height=size)
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    sw, sh = max(size, round(w * scale)), max(size, round(h * scale))
    img = frame.to_ndarray(format="rgb24", width=sw, height=sh)
    if not crop:
        return img
    y, x = (sh - size) // 2, (sw - size) // 2
    return img[y:y + size, x:x + size]
