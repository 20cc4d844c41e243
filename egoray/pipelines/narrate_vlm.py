"""``narrate`` with ``backend: vlm``: BLIP-2-family narration from frames (VideoBLIP / EILEV).

``input`` is a folder of videos (one window per video, or dense windows with ``windows.mode:
dense``) or a clip table (``video_uid, t_start, t_end`` and a ``path`` column or ``videos:``, a
folder holding ``<video_uid>.<ext>``). A Ray Data pass lists the clips (probing folder videos in
the workers) and picks each clip's in-context examples (seeded by the clip) into ``_work/clips``;
one actor pool (one GPU per actor in real configs) then checks each video once per actor —
unreadable or variable-frame-rate ones are rejected with the reason, or with ``reencode_vfr`` the
latter are re-encoded to constant rate (``OUTPUT/cfr/``) and narrated from the copy — decodes N
uniform frames per clip and per example, and generates. Output: as the narrator backend
(``captions/``, ``rejects/``, ``total.pkl``, ``run.json``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.splits import videos_in_splits
from egoray.data.videos import folder_items, is_window_table, list_video_files, video_paths
from egoray.exports import run_export
from egoray.plans import Listed, MapBatches, Pass, Prepared, Source, StreamingPlan
from egoray.stages.narrate import CaptionSink, write_total_pkl
from egoray.stages.vlm import ChooseExamples, FolderClips, TableClips

if TYPE_CHECKING:  # the narrate job's config; this module is that job's VLM backend
    from egoray.pipelines.narrate import Config


def plan_vlm(config: Config) -> StreamingPlan:
    """The narrate job's plan with ``backend: vlm`` (inputs checked here, before anything runs)."""
    from egoray.stages.vlm import VLMStage

    ic = config.vlm.in_context
    if ic.k and not ic.pool:
        raise InputError("vlm.in_context.k > 0 needs vlm.in_context.pool (a table of narrated clips)")
    keep = videos_in_splits(config.video_splits, config.splits)
    videos = video_paths(config.videos)
    w = config.windows
    clips: Source | Listed
    if is_window_table(config.input):
        source = storage.join(config.input, "narrations") if not config.input.endswith(".parquet") else config.input
        if not storage.exists(source):
            raise InputError(f"input not found: {config.input}")
        names = storage.parquet_schema(source).names
        missing = {"video_uid", "t_start", "t_end"} - set(names)
        if missing:
            raise InputError(f"{config.input}: a clip table needs video_uid, t_start, t_end (missing {sorted(missing)})")
        if "path" not in names and videos is None:
            raise InputError(f"{config.input}: has no path column; set `videos` to the folder holding <video_uid>.<ext>")
        inputs = [source]
        columns = [c for c in ("window_id", "clip_id", "narration_id", "video_uid", "t_start", "t_end", "verb",
                               "noun", "path") if c in names]
        clips, cut = Source(source, columns=columns), MapBatches(TableClips(source, videos, w.offset_sec, keep))
    else:
        files = inputs = list_video_files(config.input)
        clips = Listed(lambda: folder_items(files).select(["video_uid", "path"]),
                       f"the {len(files)} video files of {config.input}")
        cut = MapBatches(FolderClips(w.mode == "dense", w.length, w.stride, keep), batch_size=1)
    # one actor: it reads the example pool once
    prepared = Prepared("clips", clips, [cut, MapBatches(ChooseExamples, 256, args=(ic.pool or "", ic, videos))],
                        empty=f"{config.input}: no clips to narrate")
    stage = VLMStage(config.vlm, config.reencode_vfr, config.vfr_tolerance, storage.join(config.output, "cfr"),
                     config.gpus_per_actor > 0, config.resources(config.batch_size))
    sink = CaptionSink(id_column="window_id", stages=["clips", "narrate"],
                       input_columns=["window_id", "video_uid", "path", "t_start", "t_end"])
    work = Pass("narrate", Source(prepared), [stage], sink, "window_id", rows_per_file=config.rows_per_file)

    def finish(output: str) -> dict[str, Any]:
        n = run_export(write_total_pkl, output, config.total_pkl.style, "nll")
        return {"model": config.vlm.model, "backend": "vlm", "in_context_k": ic.k, "windows": n,
                "total_pkl": storage.join(output, "total.pkl")}

    return StreamingPlan(work, inputs, finish)
