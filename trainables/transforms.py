"""What Ray Data runs in its tasks: image transforms (in the spirit of torchvision's
`references/classification/presets.py`) and the per-epoch oversampling of rare classes.

`Preprocess` decodes the JPEG bytes of a batch and applies a preset; the same object runs inside
Ray Data's `map_batches`, in `isic-evaluate` and in `isic-predict`, so a checkpoint is scored exactly
as it was validated. It hands over uint8 pixels: normalisation happens on the training device, which moves a
quarter of the bytes through Ray's object store and onto the GPU.

Augmentation is seeded per batch from (seed, epoch, the batch's image ids): the same seed gives the
same images every run, and every epoch draws new ones.
"""

from __future__ import annotations

import importlib
import os
import sys
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import

from trainables.color import apply_color  # noqa: E402
from trainables.resize import EVAL_RESIZE, EVAL_RESIZES  # noqa: E402

if TYPE_CHECKING:
    import albumentations as A

PRESETS = ("standard", "none")


def load_albumentations() -> ModuleType:
    """albumentations, imported without torch where nothing imported torch before (Ray Data's
    workers, which run these transforms on numpy arrays). Its `__init__` imports its PyTorch helpers,
    and so torch, whenever torch is installed (3 s of each such worker's start on 2 CPUs), and lets
    that import fail. A later `import albumentations.pytorch` still works."""
    if "albumentations" not in sys.modules and "torch" not in sys.modules:
        sys.modules["albumentations.pytorch"] = None  # type: ignore[assignment]  # its import fails
        try:
            importlib.import_module("albumentations")
        finally:
            del sys.modules["albumentations.pytorch"]
    import albumentations

    return albumentations


def train_transform(preset: str, size: int) -> A.Compose:
    """Augmentations for training. Dermoscopy has no up or down, so flips and any rotation are
    label-preserving; scale and mild colour changes mimic differences between dermatoscopes."""
    import cv2

    A = load_albumentations()

    if preset == "none":
        return eval_transform(size)
    if preset != "standard":
        raise ValueError(f"unknown augment preset {preset!r}; known: {', '.join(PRESETS)}")
    return A.Compose(
        [
            A.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.8, 1.25)),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.Affine(rotate=(-180, 180), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.8),
        ]
    )


def eval_transform(size: int, resize: str = EVAL_RESIZE) -> A.Compose:
    """Shorter side to `size`, then the centred `size` x `size` square, as torchvision's evaluation
    presets do. Prepared images keep their aspect ratio (prepare resizes the shorter side), and
    training crops keep it within 0.8-1.25 (`RandomResizedCrop`), so the model learns undistorted
    lesions; a square resize would show it a 4:3 dermoscopy image squeezed by a third, changing the
    lesion's shape (asymmetry and border are what separates melanoma). Dermoscopy centres the
    lesion, so the crop removes mostly surrounding skin; it can cut the edge of a lesion larger than
    the square, as training's crops (half the image or more) also do. Training with the preset
    "none", validation, evaluation and predict all use this transform. `resize="squash"` is the
    square resize of checkpoints made before, which were validated that way."""
    import cv2

    A = load_albumentations()

    if resize not in EVAL_RESIZES:
        raise ValueError(f"unknown evaluation resize {resize!r}; known: {', '.join(EVAL_RESIZES)}")
    if resize == "squash":
        return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA)])
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
            A.CenterCrop(size, size),
        ]
    )


def decode_jpeg(data: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("undecodable image bytes in the prepared dataset")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def batch_seed(seed: int, epoch: int, ids) -> int:
    """A seed that depends on the run's seed, the epoch and which images the batch holds."""
    digest = zlib.crc32("\n".join(map(str, ids)).encode())
    return int(np.random.SeedSequence([seed, epoch, digest]).generate_state(1)[0])


def current_epoch() -> int:
    """How many times this dataset has been executed before: the epoch, inside a Ray Data task.

    Ray Data has no public way to tell a task which execution it belongs to, and the alternatives
    cost speed: one dataset per epoch (a split coordinator each, per trial) or augmenting on the
    training process. So this reads the one private counter, pinned with Ray's version and checked
    by `tests/test_pipeline.py` (repeatable across runs, different across epochs)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    if not hasattr(context, "_execution_idx"):
        raise RuntimeError(
            f"ray {ray.__version__}: DataContext has no _execution_idx; seeded per-epoch augmentation "
            "needs the Ray version pinned in pyproject.toml"
        )
    return context._execution_idx


def restart_epochs(dataset) -> None:
    """Count `dataset`'s executions from 0 again: a materialised dataset has run once, and the
    datasets derived from it share its counter, so their first epoch would otherwise be epoch 1
    (and a seed would draw other images than when the rows are read from the files)."""
    dataset.context._execution_idx = 0


def for_epoch(dataset, epoch: int):
    """A copy of `dataset` whose next execution is epoch `epoch`, counted on its own. Datasets
    derived from one share its context, and so its counter: a process that iterates both a trial's
    `train` and `val` (a trial that trains in its own process) would otherwise advance each one's
    epoch with the other's passes, and draw other augmentations than a Ray Train worker, whose
    `train` runs alone. A copy per epoch also draws the right epoch's augmentations after a restart,
    and while the previous epoch's execution is still running (`prefetch.py`)."""
    copy = type(dataset).copy(dataset, _deep_copy=True)
    copy.context._execution_idx = epoch
    return copy


@dataclass
class Preprocess:
    """Batch function: {"image": JPEG bytes, "label", "image_id"} -> {"image": uint8 NCHW, "label"}.
    The same colour method runs in training, validation, evaluation and predict: a checkpoint
    records the one it was trained with."""

    size: int
    augment: str | None = None  # a train preset name, or None for evaluation
    seed: int = 0
    color: str = "none"  # colour constancy, before any augmentation (see trainables/color.py)
    resize: str = EVAL_RESIZE  # how evaluation squares an image (a checkpoint records it)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not hasattr(self, "_transform"):
            import cv2

            cv2.setNumThreads(1)  # parallelism comes from Ray Data, not from OpenCV threads
            self._transform = (
                train_transform(self.augment, self.size)
                if self.augment
                else eval_transform(self.size, self.resize)
            )
        if self.augment and "image_id" in batch:
            self._transform.set_random_seed(batch_seed(self.seed, current_epoch(), batch["image_id"]))
        images = np.stack(
            [self._transform(image=apply_color(decode_jpeg(d), self.color))["image"] for d in batch["image"]]
        )
        return {
            "image": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
            "label": np.asarray(batch["label"], dtype=np.int64),
        }


class LabelByDiagnosis:
    """Batch function (pyarrow) of the diagnosis task: `label` becomes the index of the row's
    `diagnosis` among `classes`, the model's outputs."""

    def __init__(self, classes: list[str]) -> None:
        self.index = {name: i for i, name in enumerate(classes)}

    def __call__(self, table: pa.Table) -> pa.Table:
        labels = pa.array([self.index[name] for name in table.column("diagnosis").to_pylist()], pa.int64())
        return table.set_column(table.schema.get_field_index("label"), "label", labels)


class Oversample:
    """Repeat each row `factor` times on average: floor(factor) copies, plus one more with
    probability equal to the fraction, drawn afresh every epoch (seeded like the augmentation)."""

    def __init__(self, factors: dict[int, float], seed: int = 0) -> None:
        self.factors = factors
        self.seed = seed

    def __call__(self, table: pa.Table) -> pa.Table:
        labels = table.column("label").to_numpy()
        ids = table.column("image_id").to_pylist()
        rng = np.random.default_rng(batch_seed(self.seed, current_epoch(), ids))
        factor = np.array([self.factors.get(int(label), 1.0) for label in labels])
        copies = np.floor(factor).astype(np.int64)
        copies += rng.random(len(factor)) < (factor - copies)
        return table.take(pa.array(np.repeat(np.arange(len(labels)), copies)))
