"""The report's sample grid: held-out clips a person can look at and read.

Each row is one narrated clip: frame thumbnails decoded from its video, the human narrations
inside it, what every narrate output in the run (the narrator, the VLM before and after
training) wrote for it, and a question–answer pair about its video when a ``qa`` output has one.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from egoray import storage

THUMB_FRAMES, THUMB_SIZE = 4, 72
CANDIDATES = 512  # clips of the first narrate output the grid chooses from: the report reads no more
CAPTION_COLUMNS = ["window_id", "video_uid", "t_start", "t_end", "k", "text"]


def holds(job_dir: str, table: str, columns: set[str]) -> bool:
    """Whether an output has ``table`` with these columns: the report asks an output what it
    holds (narrations, questions, a narrator's captions) rather than which job wrote it."""
    files = storage.listdir(storage.join(job_dir, table), ".parquet")
    try:
        return bool(files) and columns <= set(storage.parquet_schema(files[0]).names)
    except (storage.StorageError, pa.ArrowInvalid):
        return False


def _first_captions(job_dir: str, ids: set[str] | None = None, limit: int | None = None) -> dict[str, dict[str, Any]]:
    """window_id → its first caption row (k = 0) of a narrate output: only the windows ``ids``,
    or the first ``limit`` (or more) of them, file by file."""
    url = storage.join(job_dir, "captions")
    if not storage.exists(url):
        return {}
    filters = [("k", "=", 0)] + ([("window_id", "in", sorted(ids))] if ids is not None else [])
    rows: dict[str, dict[str, Any]] = {}
    try:
        for part in storage.listdir(url, ".parquet"):
            rows.update((r["window_id"], r) for r in
                        storage.read_parquet(part, columns=CAPTION_COLUMNS, filters=filters).to_pylist())
            if limit is not None and len(rows) >= limit:
                break
    except (storage.StorageError, KeyError, pa.ArrowInvalid):
        return rows
    return rows


def _narrations(runs: list[tuple[str, dict[str, Any]]], videos: list[str]) -> pa.Table | None:
    """The narrations of ``videos`` from the run's ingest output, or None."""
    for d, _ in runs:
        if holds(d, "narrations", {"video_uid", "t_start", "t_end", "text"}):
            try:
                return storage.read_parquet(storage.join(d, "narrations"), columns=["video_uid", "t_start", "t_end",
                                                                                    "text"],
                                            filters=[("video_uid", "in", videos)])
            except (storage.StorageError, KeyError, pa.ArrowInvalid):
                continue
    return None


def _qa_by_video(runs: list[tuple[str, dict[str, Any]]], videos: list[str]) -> dict[str, dict[str, Any]]:
    """The first question–answer set of each of ``videos`` in the run's qa outputs."""
    out: dict[str, dict[str, Any]] = {}
    for d, _ in runs:
        if holds(d, "qa", {"video_uid", "question", "answer", "wrong_answers"}):
            try:
                rows = storage.read_parquet(storage.join(d, "qa"),
                                            columns=["video_uid", "question", "answer", "wrong_answers"],
                                            filters=[("video_uid", "in", videos)]).to_pylist()
            except (storage.StorageError, KeyError, pa.ArrowInvalid):
                continue
            for r in rows:
                out.setdefault(r["video_uid"], r)
    return out


def _video_dirs(run_dir: str, runs: list[tuple[str, dict[str, Any]]]) -> list[Path]:
    """Local folders that may hold the videos: the demo's data/videos, then every job's
    ``videos`` or folder ``input``."""
    candidates = [storage.join(run_dir, "data", "videos")]
    for _, run in runs:
        config = run.get("config") or {}
        candidates += [v for v in (config.get("videos"), config.get("input")) if isinstance(v, str)]
    found = []
    for c in dict.fromkeys(candidates):
        p = Path(c)
        if "://" not in c and p.is_dir():
            found.append(p)
    return found


def _video_file(uid: str, dirs: list[Path]) -> str | None:
    for d in dirs:
        for ext in (".mp4", ".mkv", ".webm", ".mov", ".avi"):
            if (d / f"{uid}{ext}").is_file():
                return str(d / f"{uid}{ext}")
    return None


def _thumbnails(path: str, t_start: float, t_end: float) -> str:
    """An <img> of THUMB_FRAMES frames spread over the clip, or a note why there is none."""
    from egoray.eval.report_figures import frame_strip
    from egoray.video.decode import VideoError, iter_frames

    times = np.linspace(t_start, t_end, THUMB_FRAMES + 2)[1:-1]
    try:
        frames = [f for _, f in iter_frames(path, times, size=THUMB_SIZE)]
    except VideoError as e:
        return f"<span class=muted>no frames ({html.escape(e.reason)})</span>"
    if not frames:
        return "<span class=muted>no frames</span>"
    data = base64.b64encode(frame_strip(frames)).decode()
    return f'<img class=thumb alt="frames of {html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def _narrate_label(job_dir: str, run: dict[str, Any]) -> str:
    """A narrate output's column heading: its folder, the model kind and the model's name."""
    config = run.get("config") or {}
    if config.get("backend") == "vlm":
        kind, model = "VLM", (config.get("vlm") or {}).get("model", "?")
    else:
        kind, model = "narrator", config.get("model", "?")
    return f"{storage.basename(job_dir)} ({kind}: {storage.basename(str(model).rstrip('/')) or model})"


def sample_grid(run_dir: str, runs: list[tuple[str, dict[str, Any]]], limit: int = 8) -> str:
    """The grid's HTML, or "" when the run has no narrate output."""
    narrates = [(d, run) for d, run in runs if holds(d, "captions", set(CAPTION_COLUMNS))]
    first: dict[str, dict[str, Any]] = {}
    source = None
    for d, _ in narrates:  # the first narrate output with captions offers the clips
        first = _first_captions(d, limit=CANDIDATES)
        if first:
            source = d
            break
    if not first:
        return ""
    outputs = [(_narrate_label(d, run), first if d == source else _first_captions(d, ids=set(first)))
               for d, run in narrates]
    outputs = [(name, caps) for name, caps in outputs if caps]
    # the clips every narrate output narrated (else those of the first), in video and time order
    common = set(first).intersection(*(set(c) for _, c in outputs[1:])) or set(first)
    chosen = sorted(common, key=lambda w: (first[w]["video_uid"], first[w]["t_start"], w))
    # spread the rows over the videos: one clip per video before a second one of any
    by_video: dict[str, list[str]] = {}
    for w in chosen:
        by_video.setdefault(first[w]["video_uid"], []).append(w)
    picked: list[str] = []
    while len(picked) < limit and any(by_video.values()):
        for v in list(by_video):
            if by_video[v] and len(picked) < limit:
                picked.append(by_video[v].pop(0))
    from egoray.eval.sections import narration_references

    videos = sorted({first[w]["video_uid"] for w in picked})
    narrations = _narrations(runs, videos)
    windows = pa.Table.from_pylist([{k: first[w][k] for k in ("window_id", "video_uid", "t_start", "t_end")}
                                    for w in picked])
    human = narration_references(narrations, windows) if narrations is not None else {}
    qa = _qa_by_video(runs, videos)
    dirs = _video_dirs(run_dir, runs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["clip", "frames", "human narration", *(name for name, _ in outputs), *(["QA pair"] if qa else [])])
    body = []
    for w in picked:
        clip = first[w]
        uid, t0, t1 = clip["video_uid"], float(clip["t_start"]), float(clip["t_end"])
        path = _video_file(uid, dirs)
        frames = _thumbnails(path, t0, t1) if path else "<span class=muted>video not found</span>"
        cells = [f"<td>{html.escape(uid[:8])}<br><span class=muted>{t0:.1f}–{t1:.1f} s</span></td>",
                 f"<td class=frames>{frames}</td>",
                 f"<td>{'<br>'.join(html.escape(h) for h in human.get(w, [])) or '<span class=muted>(none)</span>'}"
                 "</td>"]
        for _, caps in outputs:
            text = caps.get(w, {}).get("text")
            cells.append(f"<td>{html.escape(text) if text else '<span class=muted>(empty)</span>'}</td>")
        if qa:
            q = qa.get(uid)
            cells.append(f"<td><b>Q:</b> {html.escape(q['question'])}<br><b>A:</b> {html.escape(q['answer'])}"
                         f"<br><span class=muted>wrong: {html.escape(' | '.join(q['wrong_answers'] or []))}</span></td>"
                         if q else "<td class=muted>(no question about this video)</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class=grid><tr>{head}</tr>{''.join(body)}</table>"
