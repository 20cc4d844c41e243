"""The work items of the video jobs (``video_features``, ``captions``): a keyed table under ``_work``.

A folder is listed by the driver and its file names written as the plan; a clip table is keyed
by a prepared pass (:func:`egoray.data.videos.key_clips`, in Ray Data's workers or in process).
"""

from __future__ import annotations

from egoray import storage
from egoray.data.raw import InputError
from egoray.data.videos import check_clip_table, folder_items, is_table, key_clips, list_video_files
from egoray.plans import WORK_DIR, MapBatches, Prepared, Source
from egoray.work_inputs import prepare


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


def video_items(url: str, fmt: str, output: str) -> str:
    """The URL of the keyed items table (written once per output)."""
    if is_table(url, fmt):
        return prepare(output, Prepared("videos", Source(url), [MapBatches(key_clips, kwargs={"table_url": url})]))
    target = storage.join(output, WORK_DIR, "videos", "folder.parquet")
    storage.write_parquet(target, folder_items(list_video_files(url)))
    return target
