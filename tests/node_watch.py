"""Watch a Ray cluster's node table and print one JSON line each time the set of live worker
nodes changes: ``{"t": unix time, "workers": [node ids]}``. A test reads these lines as events
(the first line is the table as found); run as ``python -m tests.node_watch GCS_ADDRESS``."""

from __future__ import annotations

import json
import sys
import time


def live_workers(nodes: list[dict]) -> list[str]:
    """Live nodes other than the head (which holds the ``node:__internal_head__`` resource)."""
    return sorted(n["NodeID"] for n in nodes
                  if n.get("Alive") and "node:__internal_head__" not in n.get("Resources", {}))


def main(address: str) -> None:
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    seen: list[str] | None = None
    while True:  # ended by the test (or by the cluster going away)
        workers = live_workers(ray.nodes())
        if workers != seen:
            print(json.dumps({"t": time.time(), "workers": workers}), flush=True)
            seen = workers
        time.sleep(0.2)  # polling the GCS's table; the test waits on the lines, not on time


if __name__ == "__main__":
    main(sys.argv[1])
