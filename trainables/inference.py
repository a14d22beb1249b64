"""The one inference path: uint8 image batches in, P(positive class) out, optionally averaged over
flips and rotations. Validation in the train loop, `isic-evaluate` and `isic-predict` all call
`predict`, so a checkpoint scores the same images the same way wherever it runs. This module needs
torch only (no Ray): scoring a checkpoint does not import the training loop."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from trainables.precision import Normalize


class FlipRotateAverage(nn.Module):
    """Test-time augmentation: the mean P(class) over the image, its flips and its 90-degree rotations
    (dermoscopy has no up or down), returned as log-probabilities so that softmax recovers the mean."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = [images, images.flip(3), images.flip(2), images.rot90(1, (2, 3)), images.rot90(3, (2, 3))]
        probabilities = torch.stack([torch.softmax(self.model(v).float(), 1) for v in views]).mean(0)
        return probabilities.clamp_min(1e-12).log()


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[dict],
    normalize: Normalize,
    dtype: torch.dtype | None = None,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(positive class, the last one) for every example of `batches`
    ({"image": uint8 NCHW, "label"}), with the model in eval mode; `dtype` is the autocast dtype
    (None: fp32), `tta` averages over flips and rotations."""
    model.eval()
    scorer = FlipRotateAverage(model) if tta else model
    device_type = normalize.mean.device.type
    labels, scores = [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    for batch in batches:
        with torch.autocast(device_type, dtype=dtype) if dtype else nullcontext():
            logits = scorer(normalize(batch["image"]))
        labels.append(batch["label"].cpu().numpy())
        scores.append(torch.softmax(logits.float(), dim=1)[:, -1].cpu().numpy())
    return np.concatenate(labels), np.concatenate(scores)
