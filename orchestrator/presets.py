"""Image transforms, in the spirit of torchvision's `references/classification/presets.py`.

`Preprocess` decodes the JPEG bytes of a batch and applies a preset; the same object runs inside
Ray Data's `map_batches` and in local evaluation, so a checkpoint is scored exactly as it was
validated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

PRESETS = ("standard", "none")


def train_transform(preset: str, size: int, mean: tuple, std: tuple) -> A.Compose:
    """Augmentations for training. Dermoscopy has no up or down, so flips and any rotation are
    label-preserving; scale and mild colour changes mimic differences between dermatoscopes."""
    if preset == "none":
        return eval_transform(size, mean, std)
    if preset != "standard":
        raise ValueError(f"unknown augment preset {preset!r}; known: {', '.join(PRESETS)}")
    return A.Compose(
        [
            A.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.8, 1.25)),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.Affine(rotate=(-180, 180), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.8),
            A.Normalize(mean=mean, std=std),
        ]
    )


def eval_transform(size: int, mean: tuple, std: tuple) -> A.Compose:
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA), A.Normalize(mean=mean, std=std)])


def decode_jpeg(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("undecodable image bytes in the prepared dataset")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass
class Preprocess:
    """Batch function: {"image": JPEG bytes, "label"} -> {"image": float32 NCHW, "label": int64}."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: str | None = None  # a train preset name, or None for evaluation

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not hasattr(self, "_transform"):
            cv2.setNumThreads(1)  # parallelism comes from Ray Data, not from OpenCV threads
            self._transform = (
                train_transform(self.augment, self.size, self.mean, self.std)
                if self.augment
                else eval_transform(self.size, self.mean, self.std)
            )
        images = np.stack([self._transform(image=decode_jpeg(d))["image"] for d in batch["image"]])
        return {
            "image": np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32),
            "label": np.asarray(batch["label"], dtype=np.int64),
        }
