"""Submitting jobs to a Ray cluster through the Ray Jobs SDK: submit, status, logs, stop.

The cluster keeps Ray's token authentication on. Ray's client sends the token only in token
mode, reading it from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; when
one of those holds a token we switch the client to token mode for the call, and a refused or
missing token becomes one message saying where the token is looked for.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from egoray.errors import EgorayError
from egoray.pipelines import load_config
from egoray.settings import Settings, cluster_address

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # `ray dashboard cluster.yaml` forwards the head's dashboard here
EXCLUDES = ["/.venv", "/.git", "/out", "/data", "/egoray-demo", "/benchmarks/_work", "__pycache__", "*.h5", "*.mp4"]  # gitignore syntax: "/x" = top level only
TOKEN_SOURCES = "RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"


class SubmitError(EgorayError, RuntimeError):
    """A submission problem the user can fix (address, token, config location)."""


def token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return Path(path).expanduser().is_file()
    return (Path.home() / ".ray" / "auth_token").is_file()


def client(address: str | None = None) -> Any:
    """A JobSubmissionClient for ``address`` (else ``RAY_ADDRESS`` if it is http(s), else the
    port-forwarded dashboard), in token mode when a token is configured."""
    address = address or _http_address(cluster_address()) or DEFAULT_ADDRESS
    if token_available() and "RAY_AUTH_MODE" not in os.environ:
        # Ray reads the mode when it is imported; refresh it if something imported Ray already
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray" in sys.modules:
            from ray._raylet import Config

            Config.initialize("")
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:
        raise _explain(e, address) from None


def _http_address(value: str | None) -> str | None:
    return value if value and value.startswith(("http://", "https://")) else None


def _explain(error: Exception, address: str) -> SubmitError:
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if any(s in lowered for s in ("401", "403", "unauthorized", "authentication", "auth token", "forbidden")):
        where = "was refused" if token_available() else "is missing"
        return SubmitError(f"the Ray cluster at {address} requires an authentication token and ours {where}. "
                           f"egoray reads it from {TOKEN_SOURCES} (get it on the head with "
                           f"`ray get-auth-token`).")
    if any(s in lowered for s in ("connection refused", "failed to connect", "cannot connect", "connecterror",
                                  "max retries", "timed out")):
        return SubmitError(f"cannot reach the Ray dashboard at {address}: is the cluster up and "
                           f"`ray dashboard cluster.yaml` forwarding it? ({text.splitlines()[0][:200]})")
    return SubmitError(f"{address}: {text.splitlines()[0][:300]}")


def _call(address: str | None, fn: str, *args: Any, **kwargs: Any) -> Any:
    c = client(address)
    try:
        return getattr(c, fn)(*args, **kwargs)
    except Exception as e:
        raise _explain(e, getattr(c, "_address", address or DEFAULT_ADDRESS)) from None


def submit(config_path: str, overrides: list[str], address: str | None = None,
           working_dir: str = ".", job_id: str | None = None) -> str:
    """Validate the config here, then submit ``python jobs/<job>.py CONFIG overrides``; returns the job id."""
    config = load_config(config_path, overrides)  # a bad config fails here, not on the cluster
    root = Path(working_dir).resolve()
    path = Path(config_path).resolve()
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise SubmitError(f"{config_path} is outside the working directory {root}, which is what the cluster "
                          "receives; put the config inside it") from None
    entrypoint = " ".join(shlex.quote(x) for x in ["python", f"jobs/{config.job}.py", str(relative), *overrides])
    # the job's driver and workers get the same settings as every egoray run (never credentials)
    env_vars = Settings.from_environ(job=config.job).worker_env()
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES, "env_vars": env_vars}
    c = client(address)
    return _submit_when_agent_is_up(c, address or DEFAULT_ADDRESS, entrypoint=entrypoint, runtime_env=runtime_env,
                                    submission_id=job_id,
                                    metadata={"egoray_job": config.job, "config": str(relative)})


def agent_wait_s() -> float:
    """How long to wait for a head's job agent (``EGORAY_SUBMIT_AGENT_WAIT_S``, default 60 s)."""
    return float(os.environ.get("EGORAY_SUBMIT_AGENT_WAIT_S", "60"))


def _submit_when_agent_is_up(c: Any, address: str, **job: Any) -> str:
    """Submit, retrying Ray's "No available agent ... try again later" with a doubling pause while a
    fresh head's job agent comes up; past ``agent_wait_s`` say what keeps it away. (Each refusal
    already took the head ~10 s of its own waiting.)"""
    started = time.monotonic()
    deadline, pause, told = started + agent_wait_s(), 1.0, False
    while True:
        try:
            return c.submit_job(**job)
        except Exception as e:
            if "No available agent" not in str(e):
                raise _explain(e, address) from None
            if time.monotonic() + pause > deadline:
                raise SubmitError(_NO_AGENT.format(address=address, waited=time.monotonic() - started)) from None
            if not told:
                print(f"egoray: the head at {address} has no job agent yet; waiting up to {agent_wait_s():.0f} s",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(pause)
            pause = min(pause * 2, 8.0)


_NO_AGENT = ("the Ray head at {address} answers, but its job agent did not come up in {waited:.0f} s, so it "
             "cannot take jobs. Most often another Ray on the head machine holds the agent's port (52365 unless "
             "`ray start --dashboard-agent-listen-port` says otherwise): a local `egoray run` or `ray.init()` "
             "still running. The head's logs/dashboard_agent.log then says \"failed to bind\". Stop that Ray, or "
             "restart the head with --dashboard-agent-listen-port set to a free port.")


def status(job_id: str, address: str | None = None) -> dict[str, Any]:
    info = _call(address, "get_job_info", job_id)
    return {"job_id": job_id, "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "message": info.message, "entrypoint": info.entrypoint, "start_time": info.start_time,
            "end_time": info.end_time}


def logs(job_id: str, address: str | None = None, follow: bool = False) -> Any:
    """The job's log text; with ``follow``, print the log as it grows until the job ends (returns None)."""
    if not follow:
        return _call(address, "get_job_logs", job_id)
    import asyncio

    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as e:
        raise _explain(e, address or DEFAULT_ADDRESS) from None
    return None


def stop(job_id: str, address: str | None = None) -> bool:
    return bool(_call(address, "stop_job", job_id))
