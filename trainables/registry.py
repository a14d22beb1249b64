"""Backbone names and what the data pipeline needs to feed one, without importing timm or torch:
the processes that only build a trial's configuration or pass its train loop on (a trial's actor)
import this, not `backbones.py`."""

from __future__ import annotations

from dataclasses import dataclass

# registry name -> timm model
REGISTRY: dict[str, str] = {
    # the reference study's backbones
    "resnet50": "resnet50",
    "mobilenet": "mobilenetv1_100",
    "mobilenetv2": "mobilenetv2_100",
    "inception_v3": "inception_v3",
    "densenet169": "densenet169",
    "inception_resnet_v2": "inception_resnet_v2",
    # modern references
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "convnext_tiny": "convnext_tiny",
}


def timm_name(name: str) -> str:
    """The timm model behind a registry name; any other name is taken as a timm name."""
    return REGISTRY.get(name, name)


@dataclass(frozen=True)
class InputConfig:
    """What the pipeline needs to feed a backbone: its native size and normalisation."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
