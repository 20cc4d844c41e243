"""Video features: decode and encode videos or clip windows (the stage), HDF5 shards + index (the sink)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from egoray import storage
from egoray.config import StrictModel
from egoray.models.clip import ClipModel
from egoray.stages.base import Resources, Sink, Stage, write_part

INDEX = pa.schema([("key", pa.string()), ("video_uid", pa.string()), ("file", pa.string()), ("n", pa.int64()),
                   ("dim", pa.int64()), ("fps", pa.float64()), ("model", pa.string()),
                   ("t_start", pa.float64()), ("t_end", pa.float64())])


class Sampling(StrictModel):
    fps: float | None = Field(1.875, gt=0, description="samples per second (Ego4D features: 30/16)")
    num_frames: int | None = Field(None, ge=1, description="instead: this many uniform frames per window")
    clip_mean: bool = Field(False, description="also store the mean feature of each window")

    @model_validator(mode="after")
    def _one(self) -> Sampling:
        if self.num_frames is not None:
            self.__dict__["fps"] = None
        if self.fps is None and self.num_frames is None:
            raise ValueError("set fps or num_frames")
        return self


def to_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def stack_npy(column: Any) -> np.ndarray:
    """A column of same-shaped ``.npy`` cells (a batch's frames) as one array [N, ...]."""
    return np.stack([from_npy(b) for b in column])


def extract(path: str, t_start: float | None, t_end: float | None, sampling: Sampling, encode: Any,
            size: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(features [T, D], sample times, window start, window end) of one local video or window."""
    from egoray.video.decode import VideoError, iter_frames, probe, sample_times

    info = probe(path)
    start = 0.0 if t_start is None else float(t_start)
    end = info.duration if t_end is None else float(t_end)
    if info.duration <= 0 and t_end is None:
        raise VideoError("empty", "zero-length video")
    if end < start:
        raise VideoError("bad_window", f"t_end {end} before t_start {start}")
    times = sample_times(start, end, rate=sampling.fps, num_frames=sampling.num_frames)
    frames = (f for _, f in iter_frames(path, times, size))
    return encode(frames), times, start, end


class VideoFeatureStage(Stage):
    """Decodes each video (or window) with PyAV, streaming, and encodes the sampled frames with an
    open_clip image tower. Adds ``features`` (``.npy`` bytes of [T, D]), ``times`` and the window
    bounds; unreadable, empty or corrupt videos are rejected with the decoder's reason."""

    name = "decode_encode"

    def __init__(self, encoder: ClipModel, sampling: Sampling, encode_batch: int = 32, normalize: bool = False,
                 resources: Resources | None = None, tower: str | None = None) -> None:
        """``tower``: a ``train_video_text`` output whose video tower encodes each window's frames
        together (one feature per window) instead of ``encoder`` frame by frame."""
        super().__init__(resources)
        self.encoder_spec, self.sampling, self.tower = encoder, sampling, tower
        self.encode_batch, self.normalize = encode_batch, normalize
        self.encoder: Any = None

    def setup(self) -> None:
        from egoray.features.vision import ImageEncoder, VideoTowerEncoder

        self.encoder = VideoTowerEncoder(self.tower) if self.tower else ImageEncoder(self.encoder_spec)

    def process(self, rows: pa.Table) -> pa.Table:
        from egoray.video.decode import VideoError

        feats, times, starts, ends, reasons, details = [], [], [], [], [], []
        for row in rows.select(["path", "t_start", "t_end"]).to_pylist():
            try:
                with storage.local_copy(row["path"]) as local:
                    f, t, s, e = extract(local, row["t_start"], row["t_end"], self.sampling, self._encode,
                                         self.encoder.size)
                feats.append(to_npy(f))
                times.append(t.tolist())
                starts.append(s)
                ends.append(e)
                reasons.append(None)
                details.append(None)
            except (VideoError, storage.StorageError) as err:
                feats.append(None)
                times.append(None)
                starts.append(row["t_start"])
                ends.append(row["t_end"])
                reasons.append(getattr(err, "reason", "unreadable"))
                details.append(getattr(err, "detail", str(err))[:500])
        rows = rows.drop_columns([c for c in ("t_start", "t_end") if c in rows.column_names])
        rows = rows.append_column("features", pa.array(feats, pa.binary()))
        rows = rows.append_column("times", pa.array(times, pa.list_(pa.float64())))
        rows = rows.append_column("t_start", pa.array(starts, pa.float64()))
        rows = rows.append_column("t_end", pa.array(ends, pa.float64()))
        bad = np.array([r is not None for r in reasons])
        return self.reject(rows, bad, [r or "" for r in reasons], [d or "" for d in details])

    def _encode(self, frames: Any) -> np.ndarray:
        return self.encoder.encode_stream(frames, self.encode_batch, self.normalize)


@dataclass
class FeatureSink(Sink):
    """One HDF5 file per batch, a dataset per key (attrs fps, model, t_start, t_end), and its rows
    in the Parquet index; the frame mean of each key too with ``clip_mean``::

        features/<base>.h5      index/<base>.parquet      clip_mean/<base>.parquet
    """

    model: str = ""
    fps: float | None = None
    dtype: str = "float32"
    clip_mean: bool = False

    def write_rows(self, rows: pa.Table, output: str, base: str) -> dict[str, int]:
        file = f"features/{base}.h5"
        arrays, attrs, index, means = {}, {}, [], []
        for r in rows.select(["key", "video_uid", "features", "t_start", "t_end"]).to_pylist():
            feats = from_npy(r["features"]).astype(self.dtype)
            arrays[r["key"]] = feats
            attrs[r["key"]] = {"fps": self.fps if self.fps else float("nan"), "model": self.model,
                               "t_start": r["t_start"], "t_end": r["t_end"]}
            index.append({"key": r["key"], "video_uid": r["video_uid"], "file": file, "n": int(feats.shape[0]),
                          "dim": int(feats.shape[1]), "fps": self.fps, "model": self.model,
                          "t_start": r["t_start"], "t_end": r["t_end"]})
            if self.clip_mean:
                means.append({"key": r["key"], "embedding": feats.astype(np.float32).mean(0).tolist()})
        storage.write_hdf5_shard(storage.join(output, file), arrays, attrs)
        write_part(output, "index", base, pa.Table.from_pylist(index, schema=INDEX))
        if self.clip_mean:
            write_part(output, "clip_mean", base, pa.Table.from_pylist(
                means, schema=pa.schema([("key", pa.string()), ("embedding", pa.list_(pa.float32()))])))
        return {"frames": int(sum(i["n"] for i in index))}
