"""Variable-frame-rate detection and constant-frame-rate re-encoding (PyAV).

Some EPIC-KITCHENS videos are variable frame rate: frame times drift from ``index / fps``, so
frame-index-based annotations and uniform sampling land on the wrong frames. Detection reads the
packets' presentation times (a demux pass, no decoding); re-encoding decodes once and writes each
output tick's latest frame at a constant rate, so frame k sits at k / fps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from egoray.video.decode import VideoError


@dataclass(frozen=True)
class FrameTiming:
    frames: int
    fps: float  # median rate, 1 / median frame interval
    variable: bool
    detail: str


def frame_timing(path: str, tolerance: float = 0.1, max_packets: int | None = 20_000) -> FrameTiming:
    """Whether the first video stream's frame intervals vary by more than ``tolerance`` of the median
    (a constant-rate stream's intervals differ only by timestamp rounding)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError("no_video_stream", "the file has no video stream")
            stream = container.streams.video[0]
            tb = float(stream.time_base or 0)
            pts = []
            for packet in container.demux(stream):
                if packet.pts is not None:
                    pts.append(packet.pts)
                if max_packets is not None and len(pts) >= max_packets:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, IndexError) as e:
        raise VideoError("unreadable", str(e)[:300]) from None
    if not pts:
        raise VideoError("empty", "the file has no video packets")
    times = np.sort(np.array(pts, dtype=np.float64)) * tb
    if len(times) < 3:
        return FrameTiming(len(times), 0.0, False, "too few frames to judge")
    gaps = np.diff(times)
    median = float(np.median(gaps))
    if median <= 0:
        raise VideoError("bad_timestamps", "frames share presentation times")
    tick = tb * 1.5  # timestamps are integers in time_base units: allow one tick of rounding
    spread = np.abs(gaps - median)
    off = int((spread > max(tolerance * median, tick)).sum())
    variable = off > 0
    detail = (f"{off} of {len(gaps)} frame intervals differ from the median {median * 1000:.1f} ms "
              f"(range {gaps.min() * 1000:.1f}-{gaps.max() * 1000:.1f} ms)" if variable
              else f"constant {1 / median:.3f} fps")
    return FrameTiming(len(times), 1.0 / median, variable, detail)


def reencode_cfr(src: str, dst: str, fps: float | None = None, crf: int = 18) -> FrameTiming:
    """Write ``src`` to ``dst`` (H.264 mp4) at a constant ``fps`` (default: the median rate):
    each output frame k is the latest source frame shown at time k / fps."""
    import av

    timing = frame_timing(src)
    rate = fps or round(timing.fps) or 30
    from fractions import Fraction

    rate_q = Fraction(rate).limit_denominator(1001)
    try:
        with av.open(src) as inp, av.open(dst, mode="w") as out:
            vin = inp.streams.video[0]
            tb = float(vin.time_base)
            vout = out.add_stream("libx264", rate=rate_q)
            vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
            vout.codec_context.options = {"crf": str(crf), "preset": "veryfast"}
            k, held, start = 0, None, None
            for frame in inp.decode(vin):
                t = float(frame.pts * tb) if frame.pts is not None else float(frame.time or 0.0)
                start = t if start is None else start
                t -= start
                while held is not None and k / float(rate_q) < t:  # ticks before this frame show the held one
                    _write(vout, out, held, k)
                    k += 1
                held = frame
            if held is not None:
                _write(vout, out, held, k)
            for packet in vout.encode():
                out.mux(packet)
    except av.error.FFmpegError as e:
        raise VideoError("reencode_failed", str(e)[:300]) from None
    return frame_timing(dst)


def _write(stream, container, frame, index: int) -> None:
    import av

    copy = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
    copy.pts = index
    for packet in stream.encode(copy):
        container.mux(packet)
