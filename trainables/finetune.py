"""The fine-tuning policy: parameter groups, a frozen-backbone start and the learning-rate schedule.

- The new head trains from the first step; the backbone can stay frozen (weights and norm
  statistics) for `freeze_epochs`, then trains at `lr x backbone_lr_scale`.
- Each group warms up linearly over `warmup_epochs` from the moment it starts training, inside a
  cosine decay to zero at the last epoch (or a constant rate).
- Weight decay applies to weights only: norm parameters and biases (the 1-D tensors) get none.
The schedule is a pure function of the position in training, so a resumed trial needs no state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

from torch import nn


class LrPolicy(Protocol):
    """What the schedule reads: as in the train spec (a `TrialConfig` is one)."""

    epochs: int
    freeze_epochs: int
    warmup_epochs: float
    schedule: str


def head_parameters(model: nn.Module) -> set[int]:
    return {id(p) for p in model.get_classifier().parameters()}


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_scale: float) -> list[dict]:
    """Head/backbone x decay/no-decay groups; each remembers its `part` and `base_lr`."""
    head = head_parameters(model)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        part = "head" if id(param) in head else "backbone"
        groups.setdefault((part, param.ndim > 1), []).append(param)
    return [
        {
            "params": params,
            "part": part,
            "base_lr": lr if part == "head" else lr * backbone_lr_scale,
            "lr": lr if part == "head" else lr * backbone_lr_scale,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (part, decays), params in sorted(groups.items())
    ]


def _backbone_modules(model: nn.Module) -> Iterator[nn.Module]:
    head = {id(m) for m in model.get_classifier().modules()}
    return (m for m in model.modules() if id(m) not in head and m is not model)


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Stop (or restart) gradients into the backbone. Call `train_mode` after `model.train()`."""
    head = head_parameters(model)
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(not frozen)


def train_mode(model: nn.Module, backbone_frozen: bool) -> None:
    """`model.train()`, except that a frozen backbone keeps its norm layers' ImageNet statistics."""
    model.train()
    if backbone_frozen:
        for module in _backbone_modules(model):
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()


def lr_factor(position: float, total: float, start: float, warmup: float, schedule: str) -> float:
    """Multiplier of a group's base learning rate at `position` (fractional epochs since the run
    began), for a group that starts training at epoch `start` and stops at `total`."""
    if position < start:
        return 0.0
    elapsed, span = position - start, max(total - start, 1e-9)
    warm = min(1.0, elapsed / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(elapsed / span, 1.0)))


def set_learning_rates(optimizer, position: float, policy: LrPolicy) -> None:
    """Set every group's rate for `position`."""
    for group in optimizer.param_groups:
        start = policy.freeze_epochs if group.get("part") == "backbone" else 0.0
        factor = lr_factor(position, policy.epochs, start, policy.warmup_epochs, policy.schedule)
        group["lr"] = group["base_lr"] * factor
