"""Synthetic frames whose content is a function of the narrated action, and mp4 writing with PyAV.

Each verb draws oriented stripes (its own angle and spatial frequency, drifting at its own speed);
each noun sets the colour of the stripes and of a centred disc (its own colour pair and disc
size). Between actions the frame is plain grey. Noise is added per frame. So the verb and the
noun of any frame can be read off its pixels, and a model trained on such videos can learn
something measurable.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Iterable

import av
import numpy as np

IDLE_GREY = 110


def verb_pattern(index: int, n_verbs: int) -> tuple[float, float, float]:
    """(angle in radians, spatial frequency in cycles per frame width, drift in cycles per second)."""
    angle = np.pi * index / max(n_verbs, 1)
    freq = 2.0 + 1.5 * (index % 3)
    drift = 0.4 + 0.3 * (index % 4)
    return float(angle), float(freq), float(drift)


def noun_colours(index: int, n_nouns: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(stripe colour, disc colour, disc radius as a fraction of the frame) for a noun."""
    hue = index / max(n_nouns, 1)
    stripe = np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.95)) * 255
    disc = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.6)) * 255
    radius = 0.12 + 0.05 * (index % 4)
    return stripe, disc, radius


class FrameRenderer:
    """Renders frames of one size; the pixel grids are built once."""

    def __init__(self, size: int, n_verbs: int, n_nouns: int) -> None:
        self.size = size
        self.n_verbs = n_verbs
        self.n_nouns = n_nouns
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x, self.y = np.meshgrid(coords, coords)
        self.r = np.hypot(self.x - 0.5, self.y - 0.5)

    def frame(self, t: float, verb: int | None, noun: int | None, rng: np.random.Generator) -> np.ndarray:
        """One HxWx3 uint8 frame at time ``t`` seconds for the action (verb, noun), or idle."""
        s = self.size
        if verb is None or noun is None:
            img = np.full((s, s, 3), IDLE_GREY, np.float32)
        else:
            angle, freq, drift = verb_pattern(verb, self.n_verbs)
            stripe, disc, radius = noun_colours(noun, self.n_nouns)
            phase = self.x * np.cos(angle) + self.y * np.sin(angle)
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (freq * phase - drift * t))
            img = (0.25 + 0.75 * wave)[..., None] * stripe[None, None, :]
            img = np.where((self.r < radius)[..., None], disc[None, None, :], img)
        img = img + rng.normal(0.0, 6.0, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


def encode_mp4(frames: Iterable[np.ndarray], fps: int, size: int, gop: int | None = None) -> bytes:
    """H.264 mp4 bytes of the frames (PyAV, in-process), the same bytes for the same frames.

    Reproducible needs two settings: one thread, and no MB-tree rate control. With MB-tree on,
    x264 (core 165, single-threaded) gave the same frames other bytes in about half of repeated
    encodings in one process, depending on what the heap held (a read of memory it did not write);
    in a fresh process the heap is the same, so runs agreed until a test ran after other tests.
    ``tests/video/test_render.py`` encodes the same frames repeatedly to hold this.

    ``gop``: frames between keyframes (x264's default, 250, when None; cameras often use ~1 s)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = size
        stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"crf": "20", "preset": "veryfast", "threads": "1",
                                         "x264-params": "mbtree=0"}
        if gop:
            stream.codec_context.gop_size = gop
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
