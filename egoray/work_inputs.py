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
from egoray.inprocess import refuse_in_process, running_in_process, write_prepared
from egoray.plans import DONE_FILE, WORK_DIR, Prepared


def prepare(output: str, prep: Prepared) -> str:
    """The URL of ``prep`` under ``output``, written by the executor the job runs on."""
    from egoray import executor

    if running_in_process():
        return _once(output, prep.name, lambda url: write_prepared(prep, url))
    return _once(output, prep.name, lambda url: executor.write_dataset(lambda: executor.prepared_dataset(prep), url))


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
