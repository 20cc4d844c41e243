"""A deterministic synthetic Ego4D-style dataset in the real file formats.

``synthesize(out, videos=N, seed=S)`` writes::

    narration.json              Ego4D layout: two passes, #C/#O/#unsure tags, summaries,
                                timestamp_sec/timestamp_frame/annotation_uid, some out of order
    em_train_narrations.pkl     the episodic-memory clip layout ([start, end] per narration)
    splits.json                 {"train": [...], "val": [...], "test": [...]}
    labels.txt                  one "verb noun" action label per line
    vocab.json                  verbs, nouns and the visual pattern of each
    clips.parquet               ground truth: one row per action (video, interval, verb, noun)
    videos.parquet              video_uid, path (relative), duration, fps, size, frames
    videos/<video_uid>.mp4      frames drawn from the actions (see egoray.video.render)
    manifest.json               the arguments and the counts, including injected defects

Each video is also its own clip (``clip_uid == video_uid``). Unless ``defects=False``, a few
records are deliberately bad (duplicated narrations, empty texts), as real annotation files
are, and ``manifest.json`` says how many so that tests can reconcile the ingest counts.
"""

from __future__ import annotations

import json
import pickle
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from egoray import storage

VERBS: list[tuple[str, str]] = [
    ("open", "opens"), ("close", "closes"), ("cut", "cuts"), ("wash", "washes"),
    ("pick up", "picks up"), ("put down", "puts down"), ("stir", "stirs"), ("pour", "pours"),
]
NOUNS: list[str] = ["door", "knife", "onion", "cup", "bowl", "pan", "tap", "bottle", "plate", "spoon"]

_C_TEMPLATES = [
    "#C C {v} the {n}",
    "#C C {v} a {n}",
    "#C C {v} the {n} with his right hand",
    "#C C {v} the {n} .",
    "#C  C {v} the {n} with both hands.",
]
_O_TEMPLATE = "#O person X {v} the {n}"
_UNSURE_TEMPLATE = "#C C {v} #unsure"
_SUMMARY = "#Summary C was working in a kitchen, handling {a} and {b}."
FPS_CANONICAL = 30  # Ego4D frame numbers are at 30 fps


@dataclass(frozen=True)
class Action:
    t_start: float
    t_end: float
    verb: int
    noun: int


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def plan_actions(rng: np.random.Generator, n_actions: int) -> tuple[list[Action], float]:
    """Consecutive actions of 2–5 s with short idle gaps; returns them and the video duration."""
    t = float(rng.uniform(0.5, 1.5))
    actions = []
    for _ in range(n_actions):
        length = float(rng.uniform(2.0, 5.0))
        actions.append(Action(round(t, 3), round(t + length, 3), int(rng.integers(len(VERBS))),
                              int(rng.integers(len(NOUNS)))))
        t += length + float(rng.uniform(0.2, 1.2))
    return actions, round(t + 0.5, 3)


def _narration_text(rng: np.random.Generator, a: Action, style: int) -> str:
    v, n = VERBS[a.verb][1], NOUNS[a.noun]
    roll = rng.random()
    if roll < 0.08:
        return _O_TEMPLATE.format(v=v, n=n)
    if roll < 0.14:
        return _UNSURE_TEMPLATE.format(v=v)
    return _C_TEMPLATES[(style + int(rng.integers(len(_C_TEMPLATES)))) % len(_C_TEMPLATES)].format(v=v, n=n)


def _pass(rng: np.random.Generator, actions: list[Action], pass_no: int, defects: dict[str, int],
          with_defects: bool) -> dict[str, Any]:
    narrations = []
    for a in actions:
        if pass_no == 2 and rng.random() < 0.1:
            continue  # the second annotator skipped this one
        ts = round(float(rng.uniform(a.t_start + 0.2, a.t_end - 0.2)), 4)
        narrations.append({
            "timestamp_sec": ts,
            "timestamp_frame": int(round(ts * FPS_CANONICAL)),
            "narration_text": _narration_text(rng, a, pass_no),
            "annotation_uid": None,
        })
    ann_uid = _uid(rng)
    for n in narrations:
        n["annotation_uid"] = ann_uid
    if with_defects and narrations:
        if rng.random() < 0.3:
            narrations.append(dict(narrations[int(rng.integers(len(narrations)))]))  # exact duplicate
            defects["duplicate_narration"] += 1
        if rng.random() < 0.15:
            bad = dict(narrations[0], narration_text="  ")
            narrations.append(bad)
            defects["empty_text"] += 1
    # Real files are mostly but not always in time order: swap a few neighbours.
    for i in range(len(narrations) - 1):
        if rng.random() < 0.1:
            narrations[i], narrations[i + 1] = narrations[i + 1], narrations[i]
    nouns = sorted({NOUNS[a.noun] for a in actions})
    summary = _SUMMARY.format(a=nouns[0], b=nouns[-1])
    return {
        "narrations": narrations,
        "summaries": [{"start_sec": 0.0, "end_sec": actions[-1].t_end, "summary_text": summary,
                       "annotation_uid": ann_uid}],
    }


def synthesize(
    out: str,
    videos: int = 8,
    seed: int = 0,
    actions_per_video: int = 10,
    with_videos: bool = True,
    defects: bool = True,
    fps: int = 10,
    size: int = 96,
    gop: int | None = None,
) -> dict[str, Any]:
    """Write the dataset under ``out`` (any storage URL); returns the manifest."""
    if videos < 1 or actions_per_video < 1:
        raise ValueError("videos and actions_per_video must be at least 1")
    rng = np.random.default_rng(seed)
    defect_counts = {"duplicate_narration": 0, "empty_text": 0}
    narration_json: dict[str, Any] = {}
    em_clips: list[dict[str, Any]] = []
    clip_rows: dict[str, list] = {k: [] for k in ("video_uid", "action", "t_start", "t_end", "verb", "noun", "label")}
    plans: list[tuple[str, list[Action], float, int]] = []

    for _ in range(videos):
        uid = _uid(rng)
        actions, duration = plan_actions(rng, actions_per_video)
        video_seed = int(rng.integers(2**31))
        plans.append((uid, actions, duration, video_seed))
        narration_json[uid] = {
            f"narration_pass_{p}": _pass(rng, actions, p, defect_counts, defects) for p in (1, 2)
        }
        em_clips.append({
            "clip_uid": uid,
            "narration_pass": "narration_pass_1",
            "narrations": [
                {"narration_text": f"C {VERBS[a.verb][1]} the {NOUNS[a.noun]}. .",
                 "timestamps": [a.t_start, a.t_end]}
                for a in actions
            ],
        })
        for i, a in enumerate(actions):
            verb, noun = VERBS[a.verb][0], NOUNS[a.noun]
            for key, value in (("video_uid", uid), ("action", i), ("t_start", a.t_start), ("t_end", a.t_end),
                               ("verb", verb), ("noun", noun), ("label", f"{verb} {noun}")):
                clip_rows[key].append(value)

    uids = [p[0] for p in plans]
    order = rng.permutation(len(uids))
    n_val = max(1, round(0.15 * len(uids))) if len(uids) >= 3 else 0
    n_test = n_val
    splits = {
        "train": sorted(uids[i] for i in order[n_val + n_test:]),
        "val": sorted(uids[i] for i in order[:n_val]),
        "test": sorted(uids[i] for i in order[n_val:n_val + n_test]),
    }

    storage.makedirs(out)
    storage.write_bytes(storage.join(out, "narration.json"), json.dumps(narration_json).encode())
    storage.write_bytes(storage.join(out, "em_train_narrations.pkl"), pickle.dumps(em_clips, protocol=4))
    storage.write_json(storage.join(out, "splits.json"), splits)
    labels = sorted({f"{v[0]} {n}" for v in VERBS for n in NOUNS})
    storage.write_bytes(storage.join(out, "labels.txt"), ("\n".join(labels) + "\n").encode())
    from egoray.video.render import noun_colours, verb_pattern

    storage.write_json(storage.join(out, "vocab.json"), {
        "verbs": [{"verb": v[0], "angle_rad": verb_pattern(i, len(VERBS))[0],
                   "cycles_per_width": verb_pattern(i, len(VERBS))[1], "drift_hz": verb_pattern(i, len(VERBS))[2]}
                  for i, v in enumerate(VERBS)],
        "nouns": [{"noun": n, "stripe_rgb": [round(float(c)) for c in noun_colours(i, len(NOUNS))[0]],
                   "disc_rgb": [round(float(c)) for c in noun_colours(i, len(NOUNS))[1]],
                   "disc_radius": noun_colours(i, len(NOUNS))[2]} for i, n in enumerate(NOUNS)],
    })
    storage.write_parquet(storage.join(out, "clips.parquet"), pa.table(clip_rows))

    video_rows: dict[str, list] = {k: [] for k in ("video_uid", "path", "duration", "fps", "width", "height", "frames")}
    if with_videos:
        _write_videos(out, plans, fps, size, video_rows, gop)
        storage.write_parquet(storage.join(out, "videos.parquet"), pa.table(video_rows))

    n_narrations = sum(len(v[p]["narrations"]) for v in narration_json.values() for p in v)
    manifest = {
        "seed": seed,
        "videos": videos,
        "actions_per_video": actions_per_video,
        "with_videos": with_videos,
        "fps": fps,
        "size": size,
        "narrations": n_narrations,
        "em_narrations": sum(len(c["narrations"]) for c in em_clips),
        "actions": len(clip_rows["video_uid"]),
        "defects": defect_counts,
        "splits": {k: len(v) for k, v in splits.items()},
    }
    storage.write_json(storage.join(out, "manifest.json"), manifest)
    return manifest


def _write_videos(out: str, plans: list[tuple[str, list[Action], float, int]], fps: int, size: int,
                  rows: dict[str, list], gop: int | None = None) -> None:
    from tqdm import tqdm

    from egoray.video.render import FrameRenderer, encode_mp4

    renderer = FrameRenderer(size, len(VERBS), len(NOUNS))
    for uid, actions, duration, video_seed in tqdm(plans, desc="synth videos", unit="video", mininterval=1.0):
        vrng = np.random.default_rng(video_seed)
        n_frames = int(round(duration * fps))
        starts = np.array([a.t_start for a in actions])

        def frames(actions: list[Action] = actions, starts: np.ndarray = starts, n_frames: int = n_frames,
                   vrng: np.random.Generator = vrng):
            for k in range(n_frames):
                t = (k + 0.5) / fps
                i = int(np.searchsorted(starts, t, side="right")) - 1
                a = actions[i] if i >= 0 and t < actions[i].t_end else None
                yield renderer.frame(t, a.verb if a else None, a.noun if a else None, vrng)

        path = f"videos/{uid}.mp4"
        storage.write_bytes(storage.join(out, path), encode_mp4(frames(), fps, size, gop))
        for key, value in (("video_uid", uid), ("path", path), ("duration", n_frames / fps), ("fps", float(fps)),
                           ("width", size), ("height", size), ("frames", n_frames)):
            rows[key].append(value)
