"""Mixed precision and memory layout for the device a worker got. On CPU nothing GPU-only is reached."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# Every model and image batch here is channels-last (NHWC), on any device: GPU tensor cores want it,
# and on CPU oneDNN's convolutions train 1.1-1.5x faster in it than in NCHW (EfficientNet-Lite0 and
# MobileNetV2 at 128 px, 2 threads). Training, validation and scoring use one layout, so a
# checkpoint scores the same numbers wherever it runs.
LAYOUT = torch.channels_last


def in_layout(model: nn.Module) -> nn.Module:
    """`model` with its weights in `LAYOUT`."""
    return model.to(memory_format=LAYOUT)


def autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `requested` (auto | fp32 | bf16 | fp16) on `device`; None = fp32."""
    if requested == "fp32":
        return None
    if device.type != "cuda":
        if requested == "fp16":
            log.warning("precision fp16 needs a GPU; training in fp32 on %s", device)
        return torch.bfloat16 if requested == "bf16" else None
    if requested == "fp16":
        return torch.float16
    if requested == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling, needed by fp16 only; a disabled scaler passes calls through."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


class Normalize:
    """uint8 NCHW images from the pipeline -> normalised float on the device, in `LAYOUT`."""

    def __init__(self, mean, std, device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=LAYOUT)
