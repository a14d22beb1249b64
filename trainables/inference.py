"""The one inference path: uint8 image batches in, the probability of each class out, optionally
averaged over flips and rotations; P(malignant) is the sum over the malignant classes
(`as_binary`). Validation in the train loop, `isic-evaluate` and `isic-predict` all call
`predict`, so a checkpoint scores the same images the same way wherever it runs. This module needs
torch only (no Ray): scoring a checkpoint does not import the training loop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    """Labels and class probabilities (a row per example, a column per class) for every example of
    `batches` ({"image": uint8 NCHW, "label"}), with the model in eval mode; `dtype` is the autocast
    dtype (None: fp32), `tta` averages over flips and rotations."""
    model.eval()
    scorer = FlipRotateAverage(model) if tta else model
    device_type = normalize.mean.device.type
    labels, probabilities = [np.empty(0, np.int64)], []
    for batch in batches:
        with torch.autocast(device_type, dtype=dtype) if dtype else nullcontext():
            logits = scorer(normalize(batch["image"]))
        labels.append(batch["label"].cpu().numpy())
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    if not probabilities:  # no images: no rows, a column per class
        classes = getattr(getattr(model, "module", model), "num_classes", 2)
        probabilities.append(np.empty((0, classes), np.float32))
    return np.concatenate(labels), np.concatenate(probabilities)


def malignant_indices(classes: Sequence[str], malignant: Sequence[str]) -> list[int]:
    """The positions of the malignant classes among the model's outputs."""
    return [i for i, name in enumerate(classes) if name in malignant]


def malignant_probability(probabilities: np.ndarray, positive: Sequence[int]) -> np.ndarray:
    """P(malignant): the summed probabilities of the `positive` classes (`malignant_indices`); with
    two classes, benign and malignant, the second column."""
    return probabilities[:, list(positive)].sum(axis=1)


def as_binary(
    labels: np.ndarray, probabilities: np.ndarray, positive: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Class labels as malignant (1) or benign (0), and P(malignant). Two classes, benign and
    malignant: the labels as they are and the second column."""
    return np.isin(labels, positive).astype(np.int64), malignant_probability(probabilities, positive)
