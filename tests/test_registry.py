"""Every registry backbone builds at its own input size, and pretrained weights know ImageNet."""

import numpy as np
import pytest
import torch

from tests.helpers import SHARED_WEIGHTS, needs_shared
from trainables.backbones import REGISTRY, create_backbone, input_config, timm_name
from trainables.precision import Normalize

NATIVE_SIZE = {"inception_v3": 299, "inception_resnet_v2": 299}
CAT_CLASSES = {281, 282, 283, 285}  # tabby, tiger cat, Persian, Egyptian cat


def test_registry_holds_the_reference_studys_five():
    five = ("resnet50", "mobilenet", "mobilenetv2", "inception_v3", "densenet169", "inception_resnet_v2")
    assert set(five) <= set(REGISTRY)
    assert timm_name("mobilenet") == "mobilenetv1_100"
    assert timm_name("resnet18") == "resnet18"  # any timm name still works


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_backbone_builds_at_its_input_size(name):
    size = input_config(name).input_size
    assert size == NATIVE_SIZE.get(name, 224)
    for classes in (1, 2):
        model = create_backbone(name, "none", num_classes=classes).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, size, size))
        assert out.shape == (1, classes)
        head = model.get_classifier()
        assert head.weight.abs().max() < 0.05  # the new head starts near zero


def _cat(size: int, mean, std) -> torch.Tensor:
    import cv2
    from skimage import data

    image = cv2.resize(data.chelsea(), (size, size), interpolation=cv2.INTER_AREA)
    uint8 = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    return Normalize(mean, std, torch.device("cpu"))(uint8)


def _cat_probabilities(name: str, weights: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = create_backbone(name, weights, num_classes=None).eval()
    cfg = input_config(name)
    with torch.no_grad():
        return torch.softmax(model(_cat(cfg.input_size, cfg.mean, cfg.std)), 1)[0]


def _top1(name: str, weights: str) -> int:
    return int(_cat_probabilities(name, weights).argmax())


@needs_shared(SHARED_WEIGHTS / "mobilenetv2_100.safetensors")
def test_file_weights_recognise_a_cat():
    assert _top1("mobilenetv2", f"file:{SHARED_WEIGHTS / 'mobilenetv2_100.safetensors'}") in CAT_CLASSES


def test_packaged_weights_recognise_a_cat():
    assert _top1("efficientnet_lite0", "package") in CAT_CLASSES


def test_random_weights_do_not_know_the_cat():
    """`none` is really random initialisation: the same network that, pretrained, puts most of its
    probability on the cat classes puts almost none there."""
    cat = sorted(CAT_CLASSES)
    assert _cat_probabilities("efficientnet_lite0", "package")[cat].sum() > 0.5
    assert _cat_probabilities("efficientnet_lite0", "none")[cat].sum() < 0.05
