"""A simulated multi-node Ray (a head and two worker nodes) writing to S3 (moto on 127.0.0.1):
text_features rows are written from both worker nodes (never the head), and losing a node mid-job
still ends with every row once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from egoray import storage
from tests.conftest import ROOT, _free_port

pytestmark = pytest.mark.slow
EGORAY = [sys.executable, "-m", "egoray"]


def _node_args(**kw) -> dict:
    # explicit ports: the session's in-process Ray already holds the default agent ports
    return {"dashboard_agent_listen_port": _free_port(), "metrics_export_port": _free_port(),
            "runtime_env_agent_port": _free_port(), "include_dashboard": False, **kw}


@pytest.fixture(scope="module")
def cluster(s3_server):
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args=_node_args(num_cpus=0))
    workers = [c.add_node(**_node_args(num_cpus=2)) for _ in range(2)]
    c.wait_for_nodes()
    try:
        yield c, workers
    finally:
        c.shutdown()


def _run(config: dict, tmp_path: Path, address: str) -> subprocess.Popen:
    path = tmp_path / f"{config['job']}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([*EGORAY, "run", str(path)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _counts(out: str) -> list[dict]:
    return [storage.read_json(u) for u in storage.listdir(storage.join(out, "_counts"), ".json")]


def _texts_config(src: str, out: str) -> dict:
    return {"job": "text_features", "input": src, "output": out, "encoder": {"model": "tiny:sentence"},
            "batch_size": 8, "rows_per_file": 8, "num_actors": 2, "cpus_per_actor": 0.5}


def test_rows_come_from_both_worker_nodes_and_losing_one_mid_job_loses_nothing(cluster, ingested_small, tmp_path):
    c, workers = cluster
    worker_ids = {w.node_id for w in workers}

    # text_features on both worker nodes (never the head); once each has committed a batch, one node
    # is lost
    src = "s3://egoray-test/multinode/narrations"
    for f in (ingested_small / "narrations").glob("*.parquet"):
        storage.write_bytes(f"{src}/{f.name}", f.read_bytes())
    out = "s3://egoray-test/multinode/text_features"
    proc = _run({**_texts_config(src, out), "batch_size": 2, "rows_per_file": 2}, tmp_path, c.address)
    deadline = time.time() + 300
    while {r["node"] for r in _counts(out)} != worker_ids and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before a node could be removed"
    assert {r["node"] for r in _counts(out)} == worker_ids, "both nodes should have written by now"
    c.remove_node(workers[-1])  # the node dies with its actors and tasks
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    n = storage.read_parquet(src).num_rows
    table = storage.read_parquet(storage.join(out, "embeddings"))
    assert table.num_rows == len(set(table["id"].to_pylist())) == n  # every row, once
    # the lost node's finished writes may be redone on the survivor (Ray rebuilds lost task results),
    # so its counts can be replaced; every write still comes from a worker node, never the head
    assert {r["node"] for r in _counts(out)} <= worker_ids
    run = json.loads(storage.read_bytes(storage.join(out, "run.json")))
    assert run["stages"]["encode"]["in"] == n and run["status"] == "complete"
