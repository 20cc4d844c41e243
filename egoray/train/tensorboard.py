"""TensorBoard event files of a training run's scalars, under ``OUTPUT/tensorboard``.

Written by the rank-0 worker. A local output is written in place; for an object-store output
the events go to a local folder that is copied up at every flush (TensorBoard itself reads
``s3://`` log dirs only through TensorFlow). A resumed run purges the events after its resume
step, so a restarted worker group does not draw a second line over the same steps.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from egoray import storage

FOLDER = "tensorboard"


class ScalarLog:
    """``add(step, scalars)``; ``flush()`` makes them visible (and uploads them)."""

    def __init__(self, output: str, enabled: bool, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.writer: Any = None
        self.remote: str | None = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        target = storage.join(output, FOLDER)
        if not storage.is_remote(target):
            local = storage.filesystem(target)[1]
            os.makedirs(local, exist_ok=True)
        else:
            local = tempfile.mkdtemp(prefix="egoray-tb-")
            self.remote = target
        self.local = local
        self.writer = SummaryWriter(log_dir=local, purge_step=purge_step or None)

    def add(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                self.writer.add_scalar(prefix + name, float(value), step)

    def flush(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        if self.remote is not None:
            for name in os.listdir(self.local):
                with open(os.path.join(self.local, name), "rb") as f:
                    storage.write_bytes(storage.join(self.remote, name), f.read())

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
