"""Video splits files: which videos are train, val or test.

Three layouts are read: JSON ``{"train": [video_uid, ...], "val": [...], "test": [...]}``, CSV
with a header holding ``video_uid`` (or ``video_id``) and ``split`` columns, and Ego4D's own
metadata ``ego4d.json`` (``{"videos": [{"video_uid", "split_em", "split_fho", "split_av", ...}]}``):
there a video is ``test`` if any benchmark holds it out for test, else ``val`` if any validates on
it, else ``train`` — the removal of every benchmark's validation and test videos from
pre-training (EgoVLP's, which the CLEP notebook lacks) without a hand-made list.
"""

from __future__ import annotations

import io

import pyarrow.csv as pacsv

from egoray import storage
from egoray.data.raw import InputError, parse_json
from egoray.data.schema import SPLITS

ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}


def videos_in_splits(url: str | None, splits: list[str]) -> list[str] | None:
    """The videos of ``splits`` in the per-video splits file ``url`` (sorted); None without one."""
    if not url:
        return None
    return sorted(v for v, split in read_splits(url).items() if split in splits)


def read_splits(url: str) -> dict[str, str]:
    """video_uid → split (``train`` | ``val`` | ``test``)."""
    try:
        data = storage.read_bytes(url)
    except storage.StorageError as e:
        raise InputError(f"cannot read splits file: {e}") from None
    if url.endswith(".csv"):
        return _from_csv(data, url)
    obj = parse_json(data, url)
    if not isinstance(obj, dict):
        raise InputError(f"{url}: expected an object of split name → list of video uids")
    if isinstance(obj.get("videos"), list):
        return _from_ego4d_json(obj["videos"], url)
    mapping: dict[str, str] = {}
    for name, uids in obj.items():
        split = _split_name(name, url)
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            raise InputError(f"{url}: split {name!r} must be a list of video uid strings")
        for uid in uids:
            _assign(mapping, uid, split, url)
    return mapping


def _from_ego4d_json(videos: list, url: str) -> dict[str, str]:
    """video_uid → the most held-out split any Ego4D benchmark gives it (test > val > train)."""
    rank = {"train": 0, "val": 1, "test": 2}
    mapping: dict[str, str] = {}
    for i, video in enumerate(videos):
        if not isinstance(video, dict) or not isinstance(video.get("video_uid"), str):
            raise InputError(f"{url}: videos[{i}] has no video_uid")
        splits = [ALIASES.get(str(v).lower(), str(v).lower()) for k, v in video.items()
                  if k.startswith("split") and isinstance(v, str)]
        known = [x for x in splits if x in rank]
        if known:
            mapping[video["video_uid"]] = max(known, key=rank.__getitem__)
    return mapping


def _from_csv(data: bytes, url: str) -> dict[str, str]:
    try:
        table = pacsv.read_csv(io.BytesIO(data))
    except Exception as e:
        raise InputError(f"{url}: not a readable CSV ({e})") from None
    uid_col = next((c for c in ("video_uid", "video_id") if c in table.column_names), None)
    if uid_col is None or "split" not in table.column_names:
        raise InputError(f"{url}: needs columns video_uid (or video_id) and split; found {table.column_names}")
    mapping: dict[str, str] = {}
    for uid, name in zip(table[uid_col].to_pylist(), table["split"].to_pylist(), strict=True):
        _assign(mapping, str(uid), _split_name(str(name), url), url)
    return mapping


def _split_name(name: str, url: str) -> str:
    split = ALIASES.get(name.lower(), name.lower())
    if split not in SPLITS:
        raise InputError(f"{url}: unknown split {name!r} (expected one of {', '.join(SPLITS)})")
    return split


def _assign(mapping: dict[str, str], uid: str, split: str, url: str) -> None:
    if mapping.get(uid, split) != split:
        raise InputError(f"{url}: video {uid!r} is in both {mapping[uid]!r} and {split!r}")
    mapping[uid] = split
