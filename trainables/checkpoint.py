"""A checkpoint is a folder: `model.safetensors` plus `meta.json`, which holds everything needed
to rebuild the model (backbone, classes, input size, normalisation, colour method), the metrics it
scored, the decision threshold picked on its validation data, and the size of every file in the
folder (a copy cut short is recognised as incomplete).

`CheckpointMeta` is the one reader and writer of `meta.json`. The JSON keeps the same flat keys
every version of this project wrote; keys that older checkpoints lack get the value those versions
behaved as (colour "none", model = backbone, threshold 0.5, a square resize, no file sizes).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.errors import UserError
from trainables.inference import malignant_indices
from trainables.precision import in_layout
from trainables.resize import EVAL_RESIZES
from trainables.storage import Storage, StorageError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """What `meta.json` holds. Fields without a default are required in every checkpoint."""

    backbone: str  # the registry name the trial searched
    classes: list[str]  # index order of the model's outputs; binary: the last one is the positive class
    image_size: int
    mean: list[float]  # normalisation, on the 0-1 scale
    std: list[float]
    metrics: dict[str, Any]  # what the epoch reported (epoch, val_auc, ...)
    model: str = ""  # the timm model behind the registry name; empty: the same as `backbone`
    weights: str | None = None  # where the pretrained weights came from (hub, file:..., none)
    lr: float | None = None
    optimizer: str | None = None
    color: str = "none"  # colour constancy applied before the transform (see color.py)
    threshold: float = 0.5  # decision threshold picked on the validation data (Youden's J)
    resize: str = "squash"  # how validation squared the image (resize.py); older ones squashed
    resumed_after_epoch: int = 0  # 0: trained from the start
    node_id: str | None = None  # the Ray node that trained it
    files: dict[str, int] | None = None  # name -> size of every other file; None: not recorded
    task: str = "binary"  # or "diagnosis": `classes` are the dataset's diagnoses
    malignant: list[str] | None = None  # the classes that add up to P(malignant); None: the last one

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", self.backbone)

    @property
    def epoch(self) -> int:
        """The epoch this checkpoint was taken after."""
        return int(self.metrics["epoch"])

    @property
    def positive_class(self) -> str:
        """What a positive call is named: the binary task's last class, or `malignant`."""
        return self.classes[-1] if self.task == "binary" else "malignant"

    @property
    def negative_class(self) -> str:
        return self.classes[0] if self.task == "binary" else "benign"

    @property
    def positive_indices(self) -> list[int]:
        """The outputs whose probabilities add up to P(malignant)."""
        return malignant_indices(
            self.classes, self.classes[-1:] if self.malignant is None else self.malignant
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> CheckpointMeta:
        """Parse and check `meta.json` text read from `where` (named in every error)."""
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise UserError(
                f"{where}: not valid JSON ({err}); the checkpoint is damaged or cut short"
            ) from err
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a JSON object of checkpoint metadata")
        known = {f.name for f in fields(cls)}
        missing = [name for name in REQUIRED if name not in raw]
        if missing:
            raise UserError(f"{where}: checkpoint metadata lacks {', '.join(map(repr, missing))}")
        meta = cls(**{key: value for key, value in raw.items() if key in known})  # newer keys are ignored
        meta._check_types(where)
        return meta

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def _check_types(self, where: str) -> None:
        checks = {
            "image_size": isinstance(self.image_size, int) and self.image_size > 0,
            "classes": isinstance(self.classes, list) and len(self.classes) >= 2,
            "mean": isinstance(self.mean, list) and len(self.mean) == 3,
            "std": isinstance(self.std, list) and len(self.std) == 3,
            "metrics": isinstance(self.metrics, dict),
            "files": self.files is None or isinstance(self.files, dict),
            "threshold": isinstance(self.threshold, (int, float)),
            "resize": self.resize in EVAL_RESIZES,
            "task": self.task in ("binary", "diagnosis"),
            "malignant": self.malignant is None
            or (isinstance(self.malignant, list) and set(self.malignant) <= set(self.classes)),
        }
        for name, ok in checks.items():
            if not ok:
                raise UserError(
                    f"{where}: checkpoint metadata has an invalid '{name}': {getattr(self, name)!r}"
                )


REQUIRED = tuple(
    f.name for f in fields(CheckpointMeta) if f.default is MISSING and f.default_factory is MISSING
)


def save_checkpoint(folder: Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write the weights, then `meta.json` with the sizes of every file already in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    files = {path.name: path.stat().st_size for path in folder.iterdir() if path.name != META_FILE}
    (folder / META_FILE).write_text(replace(meta, files=files).to_json())


def is_complete(meta: CheckpointMeta, sizes: dict[str, int], folder: str) -> bool:
    """The one rule of a complete checkpoint: its meta.json records its files (older versions did
    not), and each is in `sizes` (path -> size, a storage listing) under `folder` at that size."""
    files = meta.files
    return files is not None and all(sizes.get(f"{folder}/{name}") == size for name, size in files.items())


def complete_checkpoints(storage: Storage) -> Iterator[tuple[str, CheckpointMeta]]:
    """(folder relative to `storage`, meta) of every complete checkpoint under it, at any depth. A
    meta.json that cannot be read (cut short mid-copy, or removed since the listing) is left out
    with a warning; a storage that cannot be listed raises StorageError."""
    sizes = storage.sizes()
    for path in sizes:
        folder, _, name = path.rpartition("/")
        if name != META_FILE or not folder:
            continue
        try:
            meta = CheckpointMeta.from_json(storage.read_text(path), storage.uri_of(path))
        except UserError as err:  # cut short, or removed since the listing (a storage error too)
            log.warning("left out: %s", err)
            continue
        if is_complete(meta, sizes, folder):
            yield folder, meta


def rank(metrics: dict, metric: str, mode: str) -> tuple[float, int]:
    """Where a checkpoint with `metrics` stands among its trial's, higher is better: its `metric`
    (negated for mode "min"; NaN last), and on a tie the earlier epoch (a later one must do better
    to take its place), so that the best of a trial never depends on the order of a listing."""
    value = float(metrics.get(metric, float("nan")))
    if math.isnan(value):
        value = float("-inf")
    elif mode == "min":
        value = -value
    return value, -int(metrics.get("epoch", 0))


def newest_complete(location: str) -> tuple[int, str] | None:
    """(epoch, location) of the newest complete checkpoint folder under `location` (a path or a
    URI); None if there is none, or the storage cannot be read."""
    storage = Storage(location)
    newest = None
    try:
        for folder, meta in complete_checkpoints(storage):
            try:
                epoch = meta.epoch
            except (ValueError, KeyError, TypeError):  # written by an older version
                continue
            newest = max(newest or (epoch, ""), (epoch, storage.uri_of(folder)))
    except StorageError:
        return None
    return newest


def read_meta(folder: Path) -> CheckpointMeta:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a checkpoint of this project (no {META_FILE})")
    return CheckpointMeta.from_json(path.read_text(), str(path))


def load_checkpoint(folder: Path) -> tuple[nn.Module, CheckpointMeta]:
    """The model in eval mode, and its meta."""
    meta = read_meta(folder)
    model = timm.create_model(meta.model, pretrained=False, num_classes=len(meta.classes))
    model.load_state_dict(read_weights(Path(folder)))
    return in_layout(model.eval()), meta


def read_weights(folder: Path) -> dict:
    return load_file(str(Path(folder) / WEIGHTS_FILE))
