"""timm's `hub` weights: a download with an actionable error. The driver checks beforehand that
the hub can be reached (`orchestrator.hub_check`)."""

from __future__ import annotations

import timm
from torch import nn

from trainables.errors import UserError


def ways_out(name: str) -> str:
    return (
        f"set weights for {name} to 'file:PATH' (a local .safetensors/.pth in timm's layout) "
        "or 'none' (random init); tf_efficientnet_lite0 also has 'package' (works offline)"
    )


def create_from_hub(name: str, num_classes: int) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes)
    except OSError as err:  # huggingface_hub's offline / not-found errors are OSErrors
        raise UserError(f"could not download {name} weights from the hub ({err}); {ways_out(name)}") from err
