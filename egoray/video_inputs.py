"""The work items of the video jobs (``video_features``, ``captions``): a keyed table under ``_work``.

A folder's file names are listed by the driver (:class:`~egoray.plans.Listed`); a clip table is
keyed by a prepared pass (:func:`egoray.data.videos.key_clips`, in Ray Data's workers or in process).
"""

from __future__ import annotations

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.videos import check_clip_table, folder_items, is_table, key_clips, list_video_files
from egoray.plans import Listed, MapBatches, Prepared, Source


def check_inputs(url: str, fmt: str) -> list[str]:
    """Fail fast on a bad input (before Ray starts); returns the URLs whose change refuses a resume."""
    if is_table(url, fmt):
        if not storage.exists(url):
            raise InputError(f"input not found: {url}")
        try:
            check_clip_table(storage.parquet_schema(url).names, url)
        except storage.StorageError as e:
            raise InputError(f"cannot read video table: {e}") from None
        return [url]
    return list_video_files(url)  # a changed, added or removed video refuses a resume


def video_items(url: str, fmt: str, inputs: list[str]) -> Prepared:
    """The keyed items table, prepared once per output; ``inputs``: what :func:`check_inputs` returned."""
    if is_table(url, fmt):
        return Prepared("videos", Source(url), [MapBatches(key_clips, kwargs={"table_url": url})])
    return Prepared("videos", Listed(lambda: folder_items(inputs), f"the {len(inputs)} video files of {url}"))
