"""A Ray head for tests, started as a user starts one: ``ray start --head --block`` in its own
process group, on 127.0.0.1, every port explicit (the session's in-process Ray already holds the
default agent ports), its own temp dir; ended by signalling that group and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import _free_port

RAY = str(Path(sys.executable).parent / "ray")
PORTS = ("port", "dashboard", "metrics", "agent", "agent_grpc", "runtime_env", "node_manager", "object_manager",
         "client")


@dataclass
class Head:
    proc: subprocess.Popen
    ports: dict[str, int]
    temp: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard']}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def log(self) -> str:
        return (self.temp / "head.log").read_text(errors="replace")


def free_ports() -> dict[str, int]:
    return {name: _free_port() for name in PORTS}


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a head and of the processes that join it: this interpreter's ``python``
    first on PATH (job drivers run it, as cluster.yaml arranges), no usage stats, no uv-run runtime
    env, metrics reported each second, and 127.0.0.1 as this machine's address (Ray otherwise
    rewrites a 127.0.0.1 address to the machine's outward IP, where nothing of the test listens)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "RAY_metrics_report_interval_ms": "1000", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextlib.contextmanager
def ray_head(temp: Path, args: Sequence[str] = (), env: dict[str, str] | None = None,
             dashboard: bool = True, ports: dict[str, int] | None = None,
             ready_timeout: float = 120) -> Iterator[Head]:
    """Start a head, wait until its GCS (and dashboard, when asked for) answers, end it afterwards."""
    ports = ports or free_ports()
    env = base_env(env)
    temp.mkdir(parents=True, exist_ok=True)
    log = open(temp / "head.log", "w")
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ports['port']}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
           f"--metrics-export-port={ports['metrics']}", f"--dashboard-agent-listen-port={ports['agent']}",
           f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env']}",
           f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
           f"--ray-client-server-port={ports['client']}", f"--include-dashboard={str(dashboard).lower()}",
           f"--temp-dir={temp}", "--disable-usage-stats", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(proc, ports, temp, env)
    try:
        _wait_ready(head, dashboard, ready_timeout)
        yield head
    finally:
        stop(proc)
        log.close()


def _wait_ready(head: Head, dashboard: bool, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.proc.poll() is not None:
            raise RuntimeError(f"ray head exited: {head.log()[-3000:]}")
        if dashboard:
            try:
                urllib.request.urlopen(f"{head.dashboard}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without a token): up
            except OSError:
                pass
        elif "Ray runtime started" in head.log():
            return
        time.sleep(0.5)
    raise RuntimeError(f"ray head not up after {timeout:.0f} s: {head.log()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """TERM the head's process group (its leader ignores a plain TERM), then KILL what is left of
    it. The nodes an autoscaler started are in that group too: the monitor that spawned them is."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def samples(metrics_url: str, prefix: str = "ray_egoray_") -> list[tuple[str, dict[str, str], float]]:
    """The Prometheus endpoint's samples whose name starts with ``prefix``: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith(prefix)]


def scrape_until(metrics_url: str, ready, timeout: float = 60) -> list[tuple[str, dict[str, str], float]]:
    """Scrape until ``ready(samples)`` holds: Ray's agent exports what actors record every second."""
    deadline, found = time.time() + timeout, []
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            found = samples(metrics_url)
            if ready(found):
                return found
        time.sleep(1)
    raise AssertionError(f"metrics at {metrics_url} not as expected after {timeout:.0f} s: {found[:40]}")


def value(found: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for n, lab, v in found if n == name and all(lab.get(k) == x for k, x in labels.items()))


@contextlib.contextmanager
def token_proxy(dashboard: str, token: str) -> Iterator[str]:
    """A reverse proxy on 127.0.0.1 that adds the head's token to every GET, as a proxy in front
    of a dashboard (KubeRay's, an ingress) does: a browser without the token's cookie then sees
    the dashboard's pages. Yields its URL."""
    import http.server
    import threading

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            request = urllib.request.Request(dashboard + self.path, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    code, body, kind = answer.status, answer.read(), answer.headers.get("Content-Type")
            except urllib.error.HTTPError as e:
                code, body, kind = e.code, e.read(), e.headers.get("Content-Type")
            self.send_response(code)
            if kind:
                self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
