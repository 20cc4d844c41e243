"""VLM narration (VideoBLIP / EILEV): clips to narrate, their in-context examples, the VLM stage.

Everything that touches a video runs in the workers: folder videos are probed (and tiled) by the
clip-listing pass, every clip's video is checked (readable, constant frame rate, or re-encoded to
one) by the stage that narrates it, once per actor and video.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.text import normalise_one
from egoray.models.sampling import row_seed
from egoray.models.vlm import InContext, VLMOptions
from egoray.models.vlm_examples import ExamplePool, fit_window, point_window
from egoray.stages.base import Resources, Stage, mark, with_reject_columns
from egoray.stages.narrate import tile
from egoray.video.decode import VideoError, VideoInfo

CLIPS = pa.schema([("window_id", pa.string()), ("video_uid", pa.string()), ("path", pa.string()),
                   ("t_start", pa.float64()), ("t_end", pa.float64()), ("verb", pa.string()), ("noun", pa.string())])


def resolve_path(path: str | None, base: str, videos: dict[str, str] | None, video_uid: str) -> str | None:
    """A clip's video file: its ``path`` (relative ones from ``base``), or ``videos[video_uid]``."""
    if path:
        return path if ("://" in path or path.startswith("/")) else storage.join(base, path)
    return (videos or {}).get(video_uid)


class TableClips:
    """Clip-table rows → ``CLIPS`` (window id from ``window_id``/``clip_id``/``narration_id``, else
    ``<video_uid>_<t0>_<t1>``; widened by ``offset``, never before 0; only ``keep`` videos)."""

    def __init__(self, table_url: str, videos: dict[str, str] | None, offset: float = 0.0,
                 keep: list[str] | None = None) -> None:
        self.base = table_url.rsplit("/", 1)[0] if table_url.endswith(".parquet") else table_url
        self.videos, self.offset = videos, offset
        self.keep = pa.array(sorted(keep), pa.string()) if keep is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.keep is not None:
            batch = batch.filter(pc.is_in(pc.cast(batch["video_uid"], pa.string()), value_set=self.keep))
        id_col = next((c for c in ("window_id", "clip_id", "narration_id") if c in batch.column_names), None)
        out = []
        for r in batch.to_pylist():
            t0, t1 = float(r["t_start"]) - self.offset, float(r["t_end"]) + self.offset
            out.append({"window_id": str(r[id_col]) if id_col else f"{r['video_uid']}_{t0:.3f}_{t1:.3f}",
                        "video_uid": str(r["video_uid"]),
                        "path": resolve_path(r.get("path"), self.base, self.videos, str(r["video_uid"])),
                        "t_start": max(0.0, t0), "t_end": t1, "verb": r.get("verb"), "noun": r.get("noun")})
        return pa.Table.from_pylist(out, schema=CLIPS)


class FolderClips:
    """Folder videos (``video_uid, path``) → one whole-video clip each (probed length) or dense
    windows; a video that cannot be probed keeps one clip, marked with the decoder's reason."""

    def __init__(self, dense: bool, length: float, stride: float, keep: list[str] | None = None) -> None:
        self.dense, self.length, self.stride = dense, length, stride
        self.keep = set(keep) if keep is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        from egoray.video.decode import probe

        out, bad = [], []
        for r in batch.select(["video_uid", "path"]).to_pylist():
            if self.keep is not None and r["video_uid"] not in self.keep:
                continue
            row = {"window_id": r["video_uid"], "video_uid": r["video_uid"], "path": r["path"], "t_start": 0.0,
                   "t_end": None, "verb": None, "noun": None}
            try:
                with storage.local_copy(r["path"]) as local:
                    duration = probe(local).duration
            except (VideoError, storage.StorageError) as e:
                out.append(row)
                bad.append((len(out) - 1, getattr(e, "reason", "unreadable"), str(e)[:300]))
                continue
            if not self.dense:
                out.append({**row, "t_end": duration})
                continue
            for wid, s, e in tile(r["video_uid"], 0.0, duration, self.length, self.stride):
                out.append({**row, "window_id": wid, "t_start": s, "t_end": e})
        table = with_reject_columns(pa.Table.from_pylist(out, schema=CLIPS))
        for i, reason, detail in bad:
            mask = np.zeros(table.num_rows, bool)
            mask[i] = True
            table = mark(table, mask, "clips", reason, detail)
        return table


def load_pool(url: str, ic: InContext, videos: dict[str, str] | None) -> list[dict[str, Any]]:
    """In-context examples: narrated clips of ``pool_splits`` with a video, text cleaned
    (``#C C`` → "The camera wearer"); point narrations get ``point_window_sec`` around their time."""
    source = storage.join(url, "narrations") if storage.exists(storage.join(url, "narrations")) else url
    try:
        table = storage.read_parquet(source)
    except storage.StorageError as e:
        raise InputError(f"cannot read the example pool: {e}") from None
    if ic.pool_splits and "split" in table.column_names:
        table = table.filter(pc.is_in(table["split"], value_set=pa.array(ic.pool_splits, pa.string())))
    missing = {"video_uid", "t_start", "t_end", "text"} - set(table.column_names)
    if missing:
        raise InputError(f"{url}: an example pool needs video_uid, t_start, t_end, text (missing {sorted(missing)})")
    base = source.rsplit("/", 1)[0] if source.endswith(".parquet") else source
    rows = []
    for r in table.to_pylist():
        text = normalise_one(r.get("raw_text") or r["text"] or "")
        t0, t1 = point_window(float(r["t_start"]), float(r["t_end"]), ic.point_window_sec)
        path = resolve_path(r.get("path"), base, videos, r["video_uid"])
        if text and path:
            rows.append({"video_uid": r["video_uid"], "t_start": t0, "t_end": t1, "text": text,
                         "verb": r.get("verb"), "noun": r.get("noun"), "path": path})
    if len(rows) < ic.k:
        raise InputError(f"{url}: {len(rows)} usable examples, fewer than k={ic.k}")
    return rows


class ChooseExamples:
    """Adds ``examples`` (JSON) to each clip: ``k`` pool clips chosen with a generator seeded by
    (seed, window id), so a clip gets the same examples in every run and on every worker."""

    def __init__(self, pool_url: str, ic: InContext, videos: dict[str, str] | None) -> None:
        self.pool_url, self.ic, self.videos = pool_url, ic, videos
        self.pool: ExamplePool | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.pool is None:
            self.pool = ExamplePool(load_pool(self.pool_url, self.ic, self.videos) if self.ic.k else [])
        chosen = []
        for r in batch.select(["window_id", "video_uid", "t_start", "t_end", "verb", "noun"]).to_pylist():
            rng = np.random.default_rng(row_seed(self.ic.seed, "examples", r["window_id"]))
            picks = self.pool.choose(r, self.ic.k, self.ic.strategy, self.ic.verb_noun_ratio, rng)
            chosen.append(json.dumps([{k: self.pool.pool[i][k] for k in ("path", "t_start", "t_end", "text")}
                                      for i in picks]))
        return batch.append_column("examples", pa.array(chosen, pa.string()))


def check_video(path: str, reencode: bool, tolerance: float, cfr_dir: str | None,
                files: storage.LocalFiles | None = None) -> tuple[str, VideoInfo]:
    """The file to narrate ``path`` from — itself, or (``reencode``) its constant-rate copy under
    ``cfr_dir`` — and that file's probe (duration, frame rate). Every frame interval of the whole
    video is checked. Raises
    :class:`VideoError` for unreadable or (without ``reencode``) VFR videos. ``files``: where
    remote videos are downloaded to (once)."""
    from egoray.video.decode import probe
    from egoray.video.frame_rate import frame_timing, reencode_cfr

    files = files or storage.LocalFiles(keep=1)
    try:
        local = files.path(path)
        info = probe(local)
        timing = frame_timing(local, tolerance=tolerance, max_packets=None)
        if not timing.variable:
            return path, info
        if not reencode or not cfr_dir:
            raise VideoError("variable_frame_rate", timing.detail + "; set reencode_vfr to re-encode")
        target = storage.join(cfr_dir, PurePosixPath(path).stem + ".mp4")
        if not storage.exists(target):
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, PurePosixPath(path).stem + ".mp4")
                reencode_cfr(local, out)
                with open(out, "rb") as f:
                    storage.write_bytes(target, f.read())
        return target, probe(files.path(target))
    except storage.StorageError as e:
        raise VideoError("unreadable", str(e)[:300]) from None


class VLMStage(Stage):
    """A BLIP-2-family model; narrates clips with their in-context examples (EILEV) → ``texts``,
    ``nlls``. Each clip's video (and each example's) is downloaded, checked and probed once per actor; a
    clip whose video is unusable is rejected with the reason, an example whose video is unusable
    is left out. Point narrations are narrated over ``point_window_sec`` around them."""

    name = "narrate"

    def __init__(self, options: VLMOptions, reencode_vfr: bool = False, vfr_tolerance: float = 0.1,
                 cfr_dir: str | None = None, gpu: bool = False, resources: Resources | None = None) -> None:
        super().__init__(resources)
        self.options, self.reencode, self.tolerance, self.cfr_dir, self.gpu = (
            options, reencode_vfr, vfr_tolerance, cfr_dir, gpu)
        self.vlm: Any = None
        self.size = 0
        self.checked: dict[str, tuple[str | None, str, str]] = {}  # file to read (or None), reason, detail
        self.cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.infos: dict[str, VideoInfo] = {}  # the probe of each file read, from check_video
        self.files = storage.LocalFiles(keep=8)

    def setup(self) -> None:
        import torch

        from egoray.models.vlm import load_vlm

        device = "cuda" if self.gpu and torch.cuda.is_available() else "cpu"
        self.vlm = load_vlm(self.options.model, device, self.options.dtype)
        self.size = int(self.vlm.image_processor.size["height"])

    def usable(self, path: str | None) -> tuple[str | None, str, str, float | None]:
        """(file to read, reason, detail, duration) of a video, checked once per actor."""
        if not path:
            return None, "no_video", "no video file for this clip", None
        if path not in self.checked:
            try:
                url, info = check_video(path, self.reencode, self.tolerance, self.cfr_dir, self.files)
                self.infos[url] = info
                self.checked[path] = (url, "", "")
            except VideoError as e:
                self.checked[path] = (None, e.reason, e.detail)
        url, reason, detail = self.checked[path]
        return url, reason, detail, self.infos[url].duration if url else None

    def window(self, t0: float, t1: float | None, duration: float | None) -> tuple[float, float]:
        """The clip's interval: points widened to ``point_window_sec``, kept inside the video."""
        end = float(t1) if t1 is not None else (duration or float(t0))
        return fit_window(*point_window(float(t0), end, self.options.in_context.point_window_sec), duration)

    def _frames(self, path: str, t0: float, t1: float) -> np.ndarray:
        """The clip's frames — the window's own frames subsampled at ``linspace(0, T - 1, n)``, as
        EILEV narrates (``get_clip`` + ``UniformTemporalSubsample``) and ``train_vlm`` trains
        (the videos are constant-rate: :func:`check_video`) — squashed to the processor's size, as
        BLIP-2's processor does; from a small LRU cache: the same examples serve many queries."""
        from egoray.video.decode import clip_frame_times, iter_frames

        key = (path, t0, t1)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        local = self.files.path(path)
        times = clip_frame_times(t0, max(t1, t0 + 1e-3), self.infos[path].fps, self.options.num_frames)
        frames = np.stack([f for _, f in iter_frames(local, times, self.size, squash=True)])
        if self.options.frame_cache:
            self.cache[key] = frames
            while len(self.cache) > self.options.frame_cache:
                self.cache.popitem(last=False)
        return frames

    def process(self, rows: pa.Table) -> pa.Table:
        import torch

        from egoray.models.vlm import clip_prompts, generate, pixel_values, query_inputs

        o = self.options
        records = rows.to_pylist()
        errors: dict[int, tuple[str, str]] = {}
        clips: dict[tuple, np.ndarray] = {}
        plans: dict[int, tuple[tuple, list[tuple]]] = {}
        for i, r in enumerate(records):
            path, reason, detail, duration = self.usable(r["path"])
            if path is None:
                errors[i] = (reason, detail)
                continue
            query = (path, *self.window(r["t_start"], r["t_end"], duration))
            examples = []
            for e in json.loads(r.get("examples") or "[]"):
                epath, _, _, eduration = self.usable(e["path"])
                if epath is not None:
                    examples.append(((epath, *self.window(e["t_start"], e["t_end"], eduration)), e["text"]))
            try:
                for key in [query, *(k for k, _ in examples)]:
                    if key not in clips:
                        clips[key] = self._frames(*key)
            except (VideoError, storage.StorageError) as err:
                errors[i] = (getattr(err, "reason", "unreadable"), str(err)[:300])
                continue
            plans[i] = (query, examples)
        texts: list[list[str]] = [[] for _ in records]
        nlls: list[list[float]] = [[] for _ in records]
        if plans:
            order = sorted(plans)
            # each row's clips in prompt order: its examples, then its query
            keys = [k for i in order for k in [*(e for e, _ in plans[i][1]), plans[i][0]]]
            with torch.no_grad():
                visual = clip_prompts(self.vlm.model, pixel_values(self.vlm, [clips[k] for k in keys]))
                embeds, mask = query_inputs(self.vlm, f"{o.question} {o.answer_prefix}".strip(),
                                            [[t for _, t in plans[i][1]] for i in order], visual,
                                            self.vlm.model.config.num_query_tokens, o.layout)
            seeds = [[row_seed(o.seed, "narrate_vlm", records[i]["window_id"], s) for s in range(o.n)] for i in order]
            out_texts, out_nlls = generate(self.vlm, o, embeds, mask, seeds)
            for i, ts, ns in zip(order, out_texts, out_nlls, strict=True):
                texts[i], nlls[i] = [normalise_one(t) for t in ts], ns
        rows = rows.append_column("texts", pa.array(texts, pa.list_(pa.string())))
        rows = rows.append_column("nlls", pa.array(nlls, pa.list_(pa.float64())))
        mask = np.zeros(len(records), bool)
        mask[list(errors)] = True
        return self.reject(rows, mask, [errors.get(i, ("", ""))[0] for i in range(len(records))],
                           [errors.get(i, ("", ""))[1] for i in range(len(records))],
                           [records[i]["path"] or "" if i in errors else None for i in range(len(records))])
