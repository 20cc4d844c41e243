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


def _first_captions(job_dir: str) -> dict[str, dict[str, Any]]:
    """window_id → its first caption row (k = 0) of a narrate output."""
    url = storage.join(job_dir, "captions")
    if not storage.exists(url):
        return {}
    try:
        table = storage.read_parquet(url, columns=["window_id", "video_uid", "t_start", "t_end", "k", "text"])
    except (storage.StorageError, KeyError, pa.ArrowInvalid):
        return {}
    return {r["window_id"]: r for r in table.to_pylist() if r["k"] == 0}


def _narrations(runs: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    for d, run in runs:
        if run.get("job") == "ingest" and storage.exists(storage.join(d, "narrations")):
            try:
                return storage.read_parquet(storage.join(d, "narrations"),
                                            columns=["video_uid", "t_start", "t_end", "text"]).to_pylist()
            except (storage.StorageError, KeyError, pa.ArrowInvalid):
                continue
    return []


def _qa_by_video(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d, run in runs:
        if run.get("job") == "qa" and storage.exists(storage.join(d, "qa")):
            try:
                rows = storage.read_parquet(storage.join(d, "qa"),
                                            columns=["video_uid", "question", "answer", "wrong_answers"]).to_pylist()
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
    outputs = [(_narrate_label(d, run), _first_captions(d)) for d, run in runs if run.get("job") == "narrate"]
    outputs = [(name, caps) for name, caps in outputs if caps]
    if not outputs:
        return ""
    # the clips every narrate output narrated (else those of the first), in video and time order
    common = set(outputs[0][1]).intersection(*(set(c) for _, c in outputs[1:])) or set(outputs[0][1])
    first = outputs[0][1]
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
    narrations = _narrations(runs)
    qa = _qa_by_video(runs)
    dirs = _video_dirs(run_dir, runs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["clip", "frames", "human narration", *(name for name, _ in outputs), *(["QA pair"] if qa else [])])
    body = []
    for w in picked:
        clip = first[w]
        uid, t0, t1 = clip["video_uid"], float(clip["t_start"]), float(clip["t_end"])
        human = [n["text"] for n in narrations if n["video_uid"] == uid and n["text"]
                 and t0 <= (n["t_start"] + n["t_end"]) / 2 <= t1]
        path = _video_file(uid, dirs)
        frames = _thumbnails(path, t0, t1) if path else "<span class=muted>video not found</span>"
        cells = [f"<td>{html.escape(uid[:8])}<br><span class=muted>{t0:.1f}–{t1:.1f} s</span></td>",
                 f"<td class=frames>{frames}</td>",
                 f"<td>{'<br>'.join(html.escape(h) for h in human) or '<span class=muted>(none)</span>'}</td>"]
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
