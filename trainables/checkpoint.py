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
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.errors import UserError
from trainables.resize import EVAL_RESIZES
from trainables.storage import Storage, StorageError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CheckpointMeta:
    """What `meta.json` holds. Fields without a default are required in every checkpoint."""

    backbone: str  # the registry name the trial searched
    classes: list[str]  # index order of the model's outputs; the last one is the positive class
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

    def __post_init__(self) -> None:
        if not self.model:
            object.__setattr__(self, "model", self.backbone)

    @property
    def epoch(self) -> int:
        """The epoch this checkpoint was taken after."""
        return int(self.metrics["epoch"])

    @property
    def positive_class(self) -> str:
        return self.classes[-1]

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


def is_complete(files: dict[str, int], sizes: dict[str, int], folder: str) -> bool:
    """Whether every file a checkpoint's meta.json lists (`files`: name -> size) is in `sizes`
    (path -> size, a storage listing) under `folder` at that size."""
    return all(sizes.get(f"{folder}/{name}") == size for name, size in files.items())


def newest_complete(location: str) -> tuple[int, str] | None:
    """(epoch, location) of the newest checkpoint folder under `location` (a path or a URI) whose
    files are all there at the sizes its meta.json records; None if there is none."""
    storage = Storage(location)
    try:
        sizes = storage.sizes()
    except StorageError:
        return None
    newest = None
    for path in sizes:
        folder, _, name = path.partition("/")
        if name != META_FILE:
            continue
        try:
            meta = CheckpointMeta.from_json(storage.read_text(path), storage.uri_of(path))
            epoch = meta.epoch
        except (UserError, ValueError, KeyError, TypeError):
            continue  # cut short (StorageError is a UserError too), or from an older version
        if meta.files is not None and is_complete(meta.files, sizes, folder):  # None: no training state
            newest = max(newest or (epoch, ""), (epoch, storage.uri_of(folder)))
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
    return model.eval(), meta


def read_weights(folder: Path) -> dict:
    return load_file(str(Path(folder) / WEIGHTS_FILE))
