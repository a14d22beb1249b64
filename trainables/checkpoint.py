"""A checkpoint is a folder: `model.safetensors` plus `meta.json`, which holds everything needed
to rebuild the model (backbone, classes, input size, normalisation) and the metrics it scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from orchestrator.errors import UserError

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


def save_checkpoint(folder: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


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
