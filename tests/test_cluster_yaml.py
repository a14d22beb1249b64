"""cluster.yaml against Ray's own schema (offline), what the check says of a broken copy, and the
nodes' Ray started as a local instance is (its malloc settings)."""

import re

import yaml

from orchestrator.cluster_config import check, main
from tests.helpers import ROOT

CLUSTER = ROOT / "cluster.yaml"


def test_cluster_yaml_is_valid_for_rays_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    assert check(CLUSTER) == []
    config = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(config)  # Ray's own check raises on any problem
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"] and "InstanceMarketOptions" not in head["node_config"]
    gpu_types = [t for t in types.values() if t["resources"].get("GPU")]
    assert {t["resources"]["GPU"] for t in gpu_types} >= {1, 4}  # a single- and a multi-GPU type
    assert all(t["min_workers"] == 0 for t in gpu_types)  # autoscaled from nothing
    markets = [t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") for t in gpu_types]
    assert "spot" in markets
    assert "~/isic-backbone-sweep" in config["file_mounts"]
    assert any("pip install" in c and "~/isic-backbone-sweep" in c for c in config["setup_commands"])


def test_cluster_yaml_keeps_rays_services_private():
    config = yaml.safe_load(CLUSTER.read_text())
    text = CLUSTER.read_text()
    assert "0.0.0.0" not in text
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # sent by SSH, not in the repo


def test_broken_copy_lists_every_problem(tmp_path, capsys):
    config = yaml.safe_load(CLUSTER.read_text())
    config["max_worker"] = 3
    config["idle_timeout_minutes"] = "ten"
    config["available_node_types"]["head"]["resource"] = {"CPU": 0}
    del config["available_node_types"]["gpu_4x"]["node_config"]
    config["setup_commands"] = "pip install ."  # a list of commands, not one
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(config))

    problems = check(broken)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "(top level): unknown key 'max_worker' (did you mean 'max_workers'?)" in text
    assert "idle_timeout_minutes: 'ten' should be of type number" in text
    assert "available_node_types.head: unknown key 'resource' (did you mean 'resources'?)" in text
    assert "available_node_types.gpu_4x: missing key: 'node_config'" in text
    assert "setup_commands: 'pip install .' should be of type array" in text

    assert main([str(broken)]) == 1
    out = capsys.readouterr().out
    assert out.count(str(broken)) == 5 and "5 problems" in out


def test_missing_provider_and_bad_yaml_are_named(tmp_path):
    config = yaml.safe_load(CLUSTER.read_text())
    del config["provider"]
    path = tmp_path / "no-provider.yaml"
    path.write_text(yaml.safe_dump(config))
    assert "(top level): missing key: 'provider'" in check(path)
    path.write_text("cluster_name: [unclosed\n")
    assert check(path)[0].startswith("not valid YAML")


def test_cluster_nodes_start_ray_with_the_local_instances_malloc_settings():
    from orchestrator.driver import LOCAL_RAY_ENV

    config = yaml.safe_load(CLUSTER.read_text())
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    starts = [command for command in commands if "ray start" in command]
    assert len(starts) == 2
    for command in starts:
        words = re.split(r"[\s;]+", command)
        for name in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES"):
            assert f"{name}={LOCAL_RAY_ENV[name]}" in words, (name, command)
