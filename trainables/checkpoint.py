"""A checkpoint is a folder: `model.safetensors` plus `meta.json`, which holds everything needed
to rebuild the model (backbone, classes, input size, normalisation), the metrics it scored, and the
size of every file in the folder (a copy cut short is recognised as incomplete)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.errors import UserError
from trainables.storage import Storage, StorageError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


def save_checkpoint(folder: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write the weights, then `meta.json` with the sizes of every file already in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    files = {path.name: path.stat().st_size for path in folder.iterdir() if path.name != META_FILE}
    (folder / META_FILE).write_text(json.dumps({**meta, "files": files}, indent=2))


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
            meta = json.loads(storage.read_text(path))
            epoch, files = int(meta["metrics"]["epoch"]), meta["files"]
        except (StorageError, ValueError, KeyError, TypeError):
            continue  # cut short, or from an older version
        if is_complete(files, sizes, folder):
            newest = max(newest or (epoch, ""), (epoch, storage.uri_of(folder)))
    return newest


def read_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a checkpoint of this project (no {META_FILE})")
    return json.loads(path.read_text())


def load_checkpoint(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode, and its meta."""
    meta = read_meta(folder)
    name = meta.get("model", meta["backbone"])  # the timm model behind a registry name
    model = timm.create_model(name, pretrained=False, num_classes=len(meta["classes"]))
    model.load_state_dict(read_weights(Path(folder)))
    return model.eval(), meta


def read_weights(folder: Path) -> dict:
    return load_file(str(Path(folder) / WEIGHTS_FILE))
