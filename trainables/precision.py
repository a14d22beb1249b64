"""Mixed precision and memory layout for the device a worker got. On CPU nothing GPU-only is reached."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


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
    """uint8 NCHW images from the pipeline -> normalised float on the device (channels-last on GPU)."""

    def __init__(self, mean, std, device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.channels_last = device.type == "cuda"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = (images.float() - self.mean) / self.std
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out
