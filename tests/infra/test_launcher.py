"""infra/ray/aws.yaml: valid for Ray's own cluster-launcher schema, CPU head, 8-GPU p5 workers, project setup."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from infra_helpers import REPO

CONFIG = REPO / "infra" / "ray" / "aws.yaml"


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load(CONFIG.read_text())


def prepared(cfg: dict) -> dict:
    """What `ray up` does before launching anything: fill in the AWS defaults, then validate against
    ray/autoscaler/ray-schema.json (no cloud call)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    return full


def test_valid_for_the_ray_launcher_schema(launcher):
    full = prepared(launcher)
    assert full["provider"]["type"] == "aws" and full["provider"]["region"]


def test_schema_check_can_fail(launcher):
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["gpu_h100"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        prepared(bad)
    bad = copy.deepcopy(launcher)
    bad["head_node_type"] = "gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        prepared(bad)


def test_nodes(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("m5.", "m6i.", "m7i."))
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    (worker_name,) = [n for n in types if n != launcher["head_node_type"]]
    w = types[worker_name]
    assert w["node_config"]["InstanceType"] == "p5.48xlarge"
    assert w["resources"]["GPU"] == 8
    assert 0 <= w["min_workers"] <= w["max_workers"] <= launcher["max_workers"]
    # The real-scale configs run on whole worker nodes of this cluster.
    from lare.config import load_config

    for path in ("configs/qwen2.5-vl-7b.yaml", "configs/qwen3-vl-8b.yaml"):
        n = load_config(REPO / path).train.num_workers
        assert n % w["resources"]["GPU"] == 0 and n <= w["max_workers"] * w["resources"]["GPU"]
    assert launcher["provider"]["cache_stopped_nodes"] is False


def test_setup_installs_the_synced_project(launcher):
    remote = next(r for r, local in launcher["file_mounts"].items() if local == ".")
    cmds = launcher["setup_commands"]
    install = next(i for i, c in enumerate(cmds) if "pip install" in c and "-e" in c.split() and remote.replace("/home/ubuntu", "~") in c)
    torch = next(i for i, c in enumerate(cmds) if "torch==" in c)
    assert torch < install, "torch (CUDA build, pinned) must be installed before the project"
    assert "download.pytorch.org/whl/cu" in cmds[torch]
    assert ".git" in launcher["rsync_exclude"] and ".stack" in launcher["rsync_exclude"]


def test_start_commands(launcher):
    head = " ".join(launcher["head_start_ray_commands"])
    worker = " ".join(launcher["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=127.0.0.1" in head  # reached through `ray dashboard` (SSH tunnel), not the internet
    assert "--address=$RAY_HEAD_IP:6379" in worker
    for cmds in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmds and "~/venv/bin" in cmds
    assert launcher["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
