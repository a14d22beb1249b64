import yaml

from tests.conftest import ROOT


def test_cluster_yaml_is_valid_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)  # raises on any schema violation
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]
