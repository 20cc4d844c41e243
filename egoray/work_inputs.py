"""The inputs a job derives before its pass, under ``OUTPUT/_work/<name>``: written once, kept
for every later run by a completion marker, dropped when the job is complete.

A streaming job declares them (:class:`~egoray.plans.Prepared`), so either executor writes them:
Ray Data's workers, or this process when the job runs in process. Training and eval build theirs
as Ray Datasets (:func:`prepare_dataset`): they run on Ray only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from egoray import storage
from egoray.data.raw import InputError
from egoray.inprocess import refuse_in_process, running_in_process, write_prepared
from egoray.plans import DONE_FILE, WORK_DIR, Listed, Prepared, Source

LISTING_FILE = "listed.parquet"


def resolve(output: str, source: Source) -> Source:
    """``source`` with a :class:`Prepared` input written and named by its URL (others as they are)."""
    if not isinstance(source.paths, Prepared):
        return source
    return Source(prepare(output, source.paths), source.columns, source.where)


def prepare(output: str, prep: Prepared) -> str:
    """The URL of ``prep`` under ``output``, written by the executor the job runs on."""
    from egoray import executor

    if isinstance(prep.source, Listed):
        rows = prep.source
        listed = _once(output, f"{prep.name}_listed" if prep.steps else prep.name,
                       lambda url: _write_listing(url, rows))
        if not prep.steps:
            return _checked(listed, prep)
        prep = Prepared(prep.name, Source(listed), prep.steps, prep.empty)
    if running_in_process():
        url = _once(output, prep.name, lambda url: write_prepared(prep, url))
    else:
        url = _once(output, prep.name,
                    lambda url: executor.write_dataset(lambda: executor.prepared_dataset(prep), url))
    return _checked(url, prep)


def _write_listing(url: str, listed: Listed) -> None:
    rows = listed.rows()
    storage.makedirs(url)
    if rows.num_rows:  # no file for no rows, as the executors write none
        storage.write_parquet(storage.join(url, LISTING_FILE), rows)


def _checked(url: str, prep: Prepared) -> str:
    if prep.empty and not storage.listdir(url, ".parquet"):
        raise InputError(prep.empty)
    return url


def prepare_dataset(output: str, name: str, build: Callable[[], Any]) -> str:
    """``OUTPUT/_work/<name>``: the rows of the Ray Dataset ``build()`` returns (Ray only)."""
    from egoray import executor

    refuse_in_process(f"prepares its input {WORK_DIR}/{name} first")
    return _once(output, name, lambda url: executor.write_dataset(build, url))


def clean_work(output: str) -> None:
    """Drop the prepared inputs once a job is complete (they are rebuilt if ever needed)."""
    storage.remove(storage.join(output, WORK_DIR), recursive=True)


def _once(output: str, name: str, write: Callable[[str], Any]) -> str:
    """``write(url)`` unless its completion marker is there: a run killed while writing finds no
    marker and writes it again from scratch."""
    url = storage.join(output, WORK_DIR, name)
    done = storage.join(url, DONE_FILE)
    if storage.exists(done):
        return url
    storage.remove(url, recursive=True)
    write(url)
    storage.write_json(done, {"written_at": time.time()})
    return url
