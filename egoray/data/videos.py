"""Which videos (or clip windows of them) a video job works on: one row per item, keyed.

A folder of videos is listed by the driver (file names are the plan, not records); a clip table
(``video_uid, path[, t_start, t_end][, clip_id]``) is read by workers and keyed batch by batch
with :func:`key_clips`. Both give the same columns: ``key, video_uid, path, t_start, t_end``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.data.raw import InputError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".m4v")
ITEMS = pa.schema([("key", pa.string()), ("video_uid", pa.string()), ("path", pa.string()),
                   ("t_start", pa.float64()), ("t_end", pa.float64())])


def is_table(url: str, fmt: str = "auto") -> bool:
    """Whether a video job's ``input`` is a clip table (``fmt: table``, or a ``.parquet`` under ``auto``)."""
    return fmt == "table" or (fmt == "auto" and url.endswith(".parquet"))


def is_window_table(url: str) -> bool:
    """Whether a narration job's ``input`` is a table of windows: a ``.parquet``, or an ingest
    output (it holds ``narrations/``), rather than a folder of videos."""
    return url.endswith(".parquet") or storage.exists(storage.join(url, "narrations"))


def video_paths(folder: str | None) -> dict[str, str] | None:
    """``{video_uid: path}`` of the videos directly in ``folder`` (the plan: file names, not records)."""
    if not folder:
        return None
    return {PurePosixPath(u).stem: u for u in storage.listdir(folder, skip=(".",))  # "_" can start a YouTube id
            if u.lower().endswith(VIDEO_EXTENSIONS)}


def list_video_files(url: str) -> list[str]:
    """Video files directly under ``url`` (or under its ``videos/``: a synthetic dataset folder)."""
    if not storage.exists(url):
        raise InputError(f"input not found: {url}")
    # a file name may start with "_" (YouTube ids do): only hidden files are skipped here
    out = storage.listdir(url, skip=(".",))
    videos = storage.join(url, "videos")
    if not any(u.lower().endswith(VIDEO_EXTENSIONS) for u in out) and storage.exists(videos):
        out = storage.listdir(videos, skip=(".",))
    files = [u for u in out if u.lower().endswith(VIDEO_EXTENSIONS)]
    if not files:
        raise InputError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) under {url}")
    return files


def folder_items(files: list[str]) -> pa.Table:
    """One whole-video item per file, keyed by the file stem."""
    stems = [PurePosixPath(f).stem for f in files]
    return pa.table({"key": stems, "video_uid": stems, "path": files, "t_start": pa.nulls(len(files), pa.float64()),
                     "t_end": pa.nulls(len(files), pa.float64())}, schema=ITEMS)


def check_clip_table(names: list[str], url: str) -> None:
    if not {"video_uid", "path"} <= set(names):
        raise InputError(f"{url}: needs columns video_uid and path; found {names}")


def clip_key(video_uid: str, t_start: float | None, t_end: float | None) -> str:
    """``<video_uid>_<t_start>_<t_end>``; a missing time is the video's start or end (left empty),
    both missing the whole video (its uid)."""
    if t_start is None and t_end is None:
        return video_uid
    a = "" if t_start is None else f"{t_start:.3f}"
    b = "" if t_end is None else f"{t_end:.3f}"
    return f"{video_uid}_{a}_{b}"


def key_clips(batch: pa.Table, table_url: str) -> pa.Table:
    """Clip-table rows keyed (``clip_id``, else the video uid for whole videos, else
    ``<video_uid>_<t_start>_<t_end>``) with relative paths resolved from the table's folder."""
    base = table_url.rsplit("/", 1)[0]
    n = batch.num_rows
    t0 = batch["t_start"] if "t_start" in batch.column_names else pa.nulls(n, pa.float64())
    t1 = batch["t_end"] if "t_end" in batch.column_names else pa.nulls(n, pa.float64())
    t0, t1 = pc.cast(t0, pa.float64()).to_pylist(), pc.cast(t1, pa.float64()).to_pylist()
    uids = pc.cast(batch["video_uid"], pa.string()).to_pylist()
    clip_ids = batch["clip_id"].to_pylist() if "clip_id" in batch.column_names else [None] * n
    paths = [p if ("://" in p or p.startswith("/")) else storage.join(base, p) for p in batch["path"].to_pylist()]
    keys = [str(c) if c else clip_key(u, a, b) for c, u, a, b in zip(clip_ids, uids, t0, t1, strict=True)]
    return pa.table({"key": keys, "video_uid": uids, "path": paths, "t_start": t0, "t_end": t1}, schema=ITEMS)
