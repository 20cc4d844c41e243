"""Process settings read once from the environment, and what every Ray worker is given.

A local Ray's workers inherit the driver's environment; a cluster's do not. So the settings that
change what a worker does (model cache, S3 endpoint and region, offline switches) travel in the
``runtime_env`` of every mode — ``egoray run`` locally or against ``RAY_ADDRESS``, ``egoray
submit``, Ray Train workers — from this one list. Credentials never do: a runtime env is visible
in the dashboard; workers take credentials from their node, as every Ray worker does.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

FORWARDED = (
    "EGORAY_CACHE",          # where tiny presets are built (egoray.models.tiny)
    "EGORAY_DS_SHM_COMM",    # DeepSpeed's shared-memory allreduce on CPU (egoray.train.distributed)
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
)
WORKER_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false"}  # tokenizers' threads fight Ray's for cores
DRIVER_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray's `uv run` hook would copy the working tree into a fresh environment per worker: slow,
    # and relative paths would point elsewhere. Workers use the driver's Python.
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
SECRET_PARTS = {"SECRET", "TOKEN", "PASSWORD", "CREDENTIALS"}  # name parts of credentials


@dataclass(frozen=True)
class Settings:
    """The forwarded settings as found in one environment, plus the job name for metrics."""

    values: Mapping[str, str] = field(default_factory=dict)
    job: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, job: str | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls({k: env[k] for k in FORWARDED if env.get(k)}, job)

    def worker_env(self) -> dict[str, str]:
        """Environment variables for every worker of a job (never a credential)."""
        env = {**WORKER_DEFAULTS, **self.values}
        if self.job:
            env["EGORAY_JOB"] = self.job
        leaked = [k for k in env if SECRET_PARTS & set(k.split("_")) or k.endswith("ACCESS_KEY_ID")]
        if leaked:  # a guard on this module's own list
            raise RuntimeError(f"refusing to forward secrets to workers: {leaked}")
        return env

    def runtime_env(self) -> dict[str, dict[str, str]]:
        return {"env_vars": self.worker_env()}

    def job_runtime_env(self) -> dict[str, object]:
        """The runtime env of a whole job (``ray.init``, the Jobs API): the workers' settings and
        :func:`keep_a_working_directory` run in every worker as it starts."""
        return {**self.runtime_env(), "worker_process_setup_hook": WORKER_SETUP_HOOK}


WORKER_SETUP_HOOK = "egoray.settings.keep_a_working_directory"


def working_directory_exists() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return False
    return True


def keep_a_working_directory() -> None:
    """Ray worker setup hook: a worker that starts in a directory which no longer exists (a
    ``ray start`` or the driver's shell was in a directory removed since) moves to the temp
    directory. In such a process ``import torch`` aborts the whole process with "Intel oneMKL
    FATAL ERROR: Cannot load .../libtorch_cpu.so", and Ray can only restart the actor."""
    if not working_directory_exists():
        os.chdir(tempfile.gettempdir())
        print(f"egoray: this worker's working directory no longer exists; working in {os.getcwd()}",
              file=sys.stderr)


def apply_driver_defaults() -> None:
    """Defaults the driver needs before it imports Ray (a user's own setting wins)."""
    for key, value in DRIVER_DEFAULTS.items():
        os.environ.setdefault(key, value)


def cluster_address() -> str | None:
    """The cluster this driver joins (``RAY_ADDRESS``), or None when egoray runs its own local Ray.

    The one reader of ``RAY_ADDRESS``: what a job asks of its cluster (CPUs for I/O tasks, scaled
    actor pools, metrics) depends on which of the two it runs on.
    """
    return os.environ.get("RAY_ADDRESS") or None
