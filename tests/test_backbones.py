import time

import pytest
import torch

from orchestrator.errors import UserError
from orchestrator.hub_check import check_weights
from tests.helpers import SHARED_WEIGHTS, needs_shared
from trainables.backbones import WeightSource, check_backbone, create_backbone, input_config
from trainables.package_weights import efficientnet_lite0_state_dict, map_by_position


def test_unknown_backbone_suggests_close_timm_names():
    with pytest.raises(UserError, match=r"unknown backbone 'resnet5'; did you mean .*resnet50"):
        check_backbone("resnet5")


def test_input_config_comes_from_timm():
    lite0 = input_config("tf_efficientnet_lite0")
    assert lite0.input_size == 224 and lite0.mean == (0.5, 0.5, 0.5)
    assert input_config("inception_v3").input_size == 299


@pytest.mark.parametrize("text", ["hub", "none", "package", "file:/x/w.safetensors"])
def test_weight_sources_parse(text):
    assert WeightSource.parse(text).kind == text.split(":")[0]


def test_unknown_weight_source():
    with pytest.raises(UserError, match="file:PATH"):
        WeightSource.parse("imagenet")


def test_package_weights_only_for_packaged_backbones():
    with pytest.raises(UserError, match="no packaged weights for resnet50"):
        check_weights("resnet50", WeightSource.parse("package"))


def test_missing_weights_file(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        check_weights("resnet18", WeightSource.parse(f"file:{tmp_path / 'w.pth'}"))


def test_hub_unreachable_fails_fast_with_the_way_out(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(UserError) as caught:
        check_weights("resnet50", WeightSource.parse("hub"))
    assert time.monotonic() - start < 5
    assert "cannot reach the model hub" in str(caught.value)
    assert "file:PATH" in str(caught.value) and "'none'" in str(caught.value)


def test_position_mapping_checks_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        map_by_position({"a": torch.zeros(2)}, {"b": torch.zeros(3)})


def test_packaged_lite0_weights_load_into_a_two_class_model():
    model = create_backbone("tf_efficientnet_lite0", "package", num_classes=2)
    reference = efficientnet_lite0_state_dict()
    assert torch.equal(model.conv_stem.weight, reference["conv_stem.weight"])
    assert model.get_classifier().out_features == 2


@needs_shared(SHARED_WEIGHTS / "tf_efficientnet_lite0.safetensors")
def test_packaged_lite0_conversion_matches_the_reference_file():
    from safetensors.torch import load_file

    ours = efficientnet_lite0_state_dict()
    reference = load_file(str(SHARED_WEIGHTS / "tf_efficientnet_lite0.safetensors"))
    compared = [k for k in reference if not k.endswith("num_batches_tracked")]
    assert set(compared) == set(ours)
    assert all(torch.equal(ours[k], reference[k]) for k in compared)


@needs_shared(SHARED_WEIGHTS / "mobilenetv2_100.safetensors")
def test_file_weights_load():
    path = SHARED_WEIGHTS / "mobilenetv2_100.safetensors"
    model = create_backbone("mobilenetv2_100", f"file:{path}", num_classes=2)
    from safetensors.torch import load_file

    assert torch.equal(model.conv_stem.weight, load_file(str(path))["conv_stem.weight"])


def test_random_init_is_said_loudly(caplog):
    create_backbone("test_efficientnet", "none", num_classes=2)
    assert "NOT pretrained" in caplog.text
