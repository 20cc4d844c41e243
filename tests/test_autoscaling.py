"""An autoscaling cluster as on a cloud (Ray's fake multi-node provider: each "cloud node" is another
raylet on this machine): a head with no CPUs and a GPU worker type from 0 to 2 nodes. A job asking
for GPUs makes the autoscaler add nodes, every batch is written on one of them, and after the job
nothing of ours keeps a node alive: the cluster is back to zero workers within the idle timeout."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from egoray import storage
from tests.conftest import ROOT
from tests.ray_head import base_env, free_ports, ray_head, scrape_until, value

pytestmark = pytest.mark.slow
EGORAY = [sys.executable, "-m", "egoray"]
IDLE_TIMEOUT_S = 15
MAX_GPU_NODES = 2


def _cluster_config(gcs: str) -> dict:
    """The fake provider's cluster.yaml: what ``AutoscalingCluster`` would write from the example
    config its wheel lacks, with the GCS address given (its default is port 6379)."""
    return {
        "cluster_name": "egoray-fake", "max_workers": MAX_GPU_NODES, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_S / 60, "head_node_type": "ray.head.default",
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 2, "GPU": 1}, "node_config": {}, "min_workers": 0,
                           "max_workers": MAX_GPU_NODES},
        },
        "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class NodeWatch:
    """The node-table watcher subprocess; its lines arrive on a queue (read with a deadline)."""

    def __init__(self, gcs: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.node_watch", gcs], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=base_env())
        self.events: queue.Queue = queue.Queue()
        self.seen: set[str] = set()
        self.workers: list[str] = []
        self.first_node_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next(self, deadline: float) -> dict:
        event = self.events.get(timeout=max(deadline - time.time(), 0.01))
        self.seen.update(event["workers"])
        self.workers = event["workers"]
        if event["workers"] and self.first_node_at is None:
            self.first_node_at = event["t"]
        return event

    def drain(self) -> None:
        while not self.events.empty():
            self.next(time.time() + 1)

    def until(self, predicate, deadline: float) -> dict:
        while True:
            event = self.next(deadline)
            if predicate(event["workers"]):
                return event

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory):
    temp = Path(tmp_path_factory.mktemp("as"))
    ports = free_ports()
    config = temp / "cluster.yaml"
    config.write_text(yaml.safe_dump(_cluster_config(f"127.0.0.1:{ports['port']}")))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with ray_head(temp, [f"--autoscaling-config={config}", "--num-cpus=0", "--num-gpus=0"], env=env,
                  dashboard=False, ports=ports) as head:
        yield head


def test_a_gpu_job_scales_up_from_zero_and_the_cluster_scales_back_to_zero(autoscaling_head, ingested_small,
                                                                          tmp_path):
    head = autoscaling_head
    watch = NodeWatch(head.gcs)
    try:
        first = watch.next(time.time() + 120)
        assert first["workers"] == [], "the cluster should start with no worker nodes"
        out = tmp_path / "text_features"
        config = {"job": "text_features", "input": str(ingested_small / "narrations"), "output": str(out),
                  "encoder": {"model": "tiny:sentence"}, "batch_size": 8, "rows_per_file": 8,
                  # one more actor than the cluster may have GPU nodes: the job runs on what it gets
                  "num_actors": MAX_GPU_NODES + 1, "cpus_per_actor": 1, "gpus_per_actor": 1}
        path = tmp_path / "text_features.yaml"
        path.write_text(yaml.safe_dump(config))
        started = time.time()
        proc = subprocess.Popen([*EGORAY, "run", str(path)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=base_env({"RAY_ADDRESS": head.gcs}))
        log, _ = proc.communicate(timeout=600)
        ended = time.time()
        assert proc.returncode == 0, log[-4000:] + head.log()[-3000:]
        watch.drain()  # the node events that came during the job
        assert watch.first_node_at, "the autoscaler never added a node"
        assert len(watch.seen) <= MAX_GPU_NODES

        n = storage.read_parquet(str(ingested_small / "narrations")).num_rows
        table = storage.read_parquet(str(out / "embeddings"))
        assert table.num_rows == len(set(table["id"].to_pylist())) == n  # every row, once
        counts = [json.loads(p.read_text()) for p in (out / "_counts").glob("*.json")]
        assert counts and {c["node"] for c in counts} <= watch.seen  # every batch on an autoscaled node
        run = json.loads((out / "run.json").read_text())
        assert run["status"] == "complete" and run["stages"]["encode"]["in"] == n
        ran = run["actors"]["encode"]
        assert run["actors_configured"]["encode"] == MAX_GPU_NODES + 1 and 1 <= ran <= MAX_GPU_NODES
        assert run["model_loads"]["encode"] == ran
        assert f"encode: {ran} of {MAX_GPU_NODES + 1} actors ran" in log

        # the live stage counters (what the Grafana board's rows/s and model loads read), exported
        # by the head that holds the metrics actor; every name the board queries is among them. Each
        # counter reaches the exporter on its own tick, so wait for all of them to be final.
        def counts(found):
            return (value(found, "ray_egoray_stage_total", job="text_features", stage="encode", kind="rows"),
                    value(found, "ray_egoray_stage_total", job="text_features", stage="encode", kind="model_loads"),
                    value(found, "ray_egoray_records_total", job="text_features", stage="encode", kind="in"))
        found = scrape_until(head.metrics, lambda found: counts(found) == (n, ran, n))
        board = (ROOT / "docs" / "grafana" / "egoray.json").read_text()
        assert set(re.findall(r"ray_egoray_\w+", board)) <= {name for name, _, _ in found} | {"ray_egoray_units_total"}

        # nothing of ours keeps a node: all of them go within the idle timeout (+ 30 s of slack)
        zero_at = ended if not watch.workers else watch.until(lambda w: not w, ended + IDLE_TIMEOUT_S + 30)["t"]
        print(f"\nautoscaling: {len(watch.seen)} nodes; first node {watch.first_node_at - started:.0f} s after "
              f"the job started; job {ended - started:.0f} s; zero workers {zero_at - ended:.0f} s after it ended")
    finally:
        watch.close()
