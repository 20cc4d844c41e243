"""Ego4D's forecasting-hands-objects annotations (``fho_main.json``): the narrated actions that
EILEV and VideoBLIP train on, with their structured verb and object-of-change noun.

An action is kept as EILEV keeps it: not rejected, a valid action, and narrated about the camera
wearer (``#C C ...``); the others are rejects with the reason. Kept actions are numbered per
video in file order, and the id is EILEV's frame path ``<video_uid>|<index>``. The noun is the
``structured_noun`` of the ``object_of_change`` box in the point-of-no-return frame (none when
the action has no such frame). Narrations are points (``t_start = t_end`` =
``narration_timestamp_sec``).
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

from egoray.data.raw import InputError, RawRows, parse_json

SOURCE = "ego4d_fho"
CAMERA_WEARER = re.compile(r"^\s*#c\s+c\b", re.IGNORECASE)


def structured_noun(action: dict[str, Any]) -> str | None:
    """The object of change's structured noun in the point-of-no-return frame."""
    for frame in action.get("frames") or []:
        if not isinstance(frame, dict) or frame.get("frame_type") != "pnr_frame":
            continue
        for box in frame.get("boxes") or []:
            if isinstance(box, dict) and box.get("object_type") == "object_of_change" and box.get("structured_noun"):
                return str(box["structured_noun"])
    return None


def _rejection(action: dict[str, Any]) -> tuple[str, str] | None:
    if action.get("is_rejected"):
        return "rejected_action", "the annotators rejected it"
    if not action.get("is_valid_action"):
        return "invalid_action", "not a valid action"
    if not isinstance(action.get("narration_text"), str) or not CAMERA_WEARER.match(action["narration_text"]):
        return "not_camera_wearer", "not narrated as the camera wearer's action (#C C)"
    return None


def read_fho_main(data: bytes, name: str = "fho_main.json") -> pa.Table:
    """RAW rows of every narrated action of every video (kept ones numbered per video)."""
    doc = parse_json(data, name)
    videos = doc.get("videos") if isinstance(doc, dict) else None
    if not isinstance(videos, list):
        raise InputError(f"{name}: expected {{\"videos\": [...]}} (Ego4D's fho_main.json)")
    rows = RawRows()
    for v, video in enumerate(videos):
        uid = video.get("video_uid") if isinstance(video, dict) else None
        if not isinstance(uid, str) or not uid:
            rows.add(f"video#{v}", None, SOURCE, None, None, None, issue="missing_field", issue_detail="no video_uid")
            continue
        kept, dropped = 0, 0
        for interval in video.get("annotated_intervals") or []:
            for action in (interval or {}).get("narrated_actions") or []:
                if not isinstance(action, dict):
                    continue
                why = _rejection(action)
                t = action.get("narration_timestamp_sec")
                if why is not None:
                    rows.add(f"{uid}|rejected{dropped}", uid, SOURCE, action.get("narration_text"), t, t,
                             issue=why[0], issue_detail=why[1])
                    dropped += 1
                    continue
                rows.add(f"{uid}|{kept}", uid, SOURCE, action["narration_text"], t, t,
                         verb=action.get("structured_verb"), noun=structured_noun(action))
                kept += 1
    return rows.to_table()
