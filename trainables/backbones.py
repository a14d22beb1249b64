"""Build a timm backbone with a new classification head from one of the weight sources.

Backbones are named by the registry (`registry.py`) (the reference study's five and modern references) or by
any timm model name. Input size and normalisation come from timm's pretrained config.

Weight sources:
- `hub`: timm's pretrained weights, downloaded once into the Hugging Face cache;
- `file:PATH`: a local `.safetensors` / `.pth` file in timm's key layout;
- `package`: weights shipped in a pip package (see `package_weights.py`), no network needed;
- `none`: random initialisation, which is never transfer learning and is logged loudly.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import timm
from torch import nn

from trainables.errors import UserError
from trainables.package_weights import PACKAGE_WEIGHTS
from trainables.registry import REGISTRY, InputConfig, timm_name

log = logging.getLogger(__name__)

WEIGHT_KINDS = ("hub", "file:PATH", "package", "none")


@dataclass(frozen=True)
class WeightSource:
    kind: str  # hub | file | package | none
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> WeightSource:
        if text in ("hub", "package", "none"):
            return cls(text)
        if text.startswith("file:") and len(text) > len("file:"):
            return cls("file", Path(text[len("file:") :]).expanduser())
        raise UserError(f"unknown weight source '{text}'; use one of {', '.join(WEIGHT_KINDS)}")

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"


@cache
def known_backbones() -> frozenset[str]:
    return frozenset(timm.list_models())


def check_backbone(name: str) -> None:
    """Raise a UserError naming close names when `name` is neither a registry name nor a timm model."""
    if timm_name(name) in known_backbones():
        return
    close = difflib.get_close_matches(name, sorted(REGISTRY) + sorted(known_backbones()), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise UserError(f"unknown backbone '{name}'{hint} (registry: {', '.join(REGISTRY)})")


def input_config(name: str) -> InputConfig:
    """Native input size and mean/std from timm's pretrained config, without building the model."""
    check_backbone(name)
    cfg = timm.models.get_pretrained_cfg(timm_name(name))
    if cfg is None:
        return InputConfig(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return InputConfig(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))


def check_local_weights(name: str, source: WeightSource) -> None:
    """Fail when `file:` or `package` weights for `name` cannot be had (the hub is probed by the
    driver: `orchestrator.hub_check`)."""
    check_backbone(name)
    model = timm_name(name)
    if source.kind == "file" and not source.path.is_file():
        raise UserError(f"weights file not found for {name}: {source.path}")
    if source.kind == "package" and model not in PACKAGE_WEIGHTS:
        raise UserError(
            f"no packaged weights for {name}; packaged: {', '.join(PACKAGE_WEIGHTS)}. "
            "Use 'hub', 'file:PATH' or 'none'"
        )


IMAGENET_CLASSES = 1000


def create_backbone(name: str, weights: str | WeightSource, num_classes: int | None) -> nn.Module:
    """A timm model `name` with the requested weights and a fresh, small-initialised `num_classes`
    head; `num_classes=None` keeps the pretrained ImageNet head (to check what the weights know)."""
    if num_classes is None:
        return _create(name, weights, IMAGENET_CLASSES)
    return init_head(_create(name, weights, num_classes))


def init_head(model: nn.Module) -> nn.Module:
    """Start the new head near zero. timm's default head init is scaled for 1000 classes: with two,
    its logits start around +-10 and the first steps wreck the pretrained features."""
    for module in model.get_classifier().modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _create(name: str, weights: str | WeightSource, num_classes: int) -> nn.Module:
    source = WeightSource.parse(weights) if isinstance(weights, str) else weights
    check_backbone(name)
    if source.kind in ("file", "package"):
        check_local_weights(name, source)
    name = timm_name(name)
    if source.kind == "none":
        log.warning("%s: random initialisation (weights: none) -- NOT pretrained", name)
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if source.kind == "file":
        return timm.create_model(
            name,
            pretrained=True,
            num_classes=num_classes,
            pretrained_cfg_overlay={"file": str(source.path)},
        )
    if source.kind == "package":
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        state = PACKAGE_WEIGHTS[name]()
        head = model.default_cfg.get("classifier", "classifier")
        if num_classes != IMAGENET_CLASSES:
            state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(head + ".") for k in missing):
            raise RuntimeError(f"packaged weights for {name} do not fit: {missing} {unexpected}")
        return model
    from trainables.hub import create_from_hub

    return create_from_hub(name, num_classes)


def registry_table() -> str:
    """The registry as Markdown: name, timm model, native input size, normalisation."""
    rows = ["| name | timm model | input | mean | std |", "|---|---|---|---|---|"]
    for name, model in REGISTRY.items():
        cfg = input_config(name)
        rows.append(f"| {name} | {model} | {cfg.input_size} | {cfg.mean} | {cfg.std} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(registry_table())
