"""cluster.yaml against the Ray cluster launcher's own schema, and the properties we promise."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_the_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(_config())  # fills the launcher's defaults, as `ray up` does
    validate_config(config)  # raises on any schema violation


def test_head_takes_no_tasks_and_gpu_workers_autoscale():
    config = _config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 < v["max_workers"] for v in workers.values())
    assert any(v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for v in workers.values())
    assert any(v["node_config"]["InstanceType"].startswith("p5.48xlarge") for v in workers.values())
    assert config["idle_timeout_minutes"] > 0
    assert any("--extra vllm" in c for c in config["setup_commands"])


def test_dashboard_is_only_reachable_through_port_forwarding():
    config = _config()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for rule in config["provider"]["security_group"]["IpPermissions"]:
        assert rule["FromPort"] == rule["ToPort"] == 22, "only SSH may be open to the outside"
    text = (ROOT / "cluster.yaml").read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
