"""Exports: a file a job writes from its committed tables (``total.pkl``, an HDF5, a report),
run in a Ray worker, not in the driver — which may be a laptop far from the data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egoray.errors import ray_errors
from egoray.inprocess import running_in_process


def run_export(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in one Ray task with the CPUs of a read or write task; our errors come back as
    themselves. A job running in process (:mod:`egoray.inprocess`) calls it here."""
    if running_in_process():
        return fn(*args)
    import ray

    from egoray.ray_data_context import io_cpus

    with ray_errors():
        return ray.get(ray.remote(fn).options(num_cpus=io_cpus()).remote(*args))
