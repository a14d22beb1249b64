"""The code that runs on each Ray Train worker: fine-tune one backbone, report every epoch.

Everything the loop needs arrives in its config dict. Validation metrics are computed over the
whole validation split (it is not sharded), so rank 0's report is the trial's true score.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch import nn

from trainables.backbones import create_backbone
from trainables.checkpoint import read_meta, read_weights, save_checkpoint
from trainables.metrics import binary_metrics, log_loss
from trainables.optimizers import build_optimizer

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 512
REPORTED_METRICS = (
    "train_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_specificity",
    "val_f1",
    "val_auc",
    "val_loss",
)
OPTIMIZER_FILE = "optimizer.pt"


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss). Reported as the trial's failure, not retried."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def predict(model: nn.Module, batches) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(positive class) for every example in `batches`."""
    model.eval()
    labels, scores = [], []
    for batch in batches:
        probabilities = torch.softmax(model(batch["image"]).float(), dim=1)[:, -1]
        labels.append(batch["label"].cpu().numpy())
        scores.append(probabilities.cpu().numpy())
    return np.concatenate(labels), np.concatenate(scores)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        loss = F.cross_entropy(model(batch["image"]), batch["label"])
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite training loss ({loss.item()}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch["label"])
        count += len(batch["label"])
    return total / max(count, 1)


def validation_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    metrics = {f"val_{name}": value for name, value in binary_metrics(labels, scores).items()}
    metrics["val_loss"] = log_loss(labels, scores)
    return metrics


def train_loop_per_worker(config: dict[str, Any]) -> None:
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(config["seed"] + rank)
    np.random.seed(config["seed"] + rank)

    model = create_backbone(config["backbone"], config["weights"], num_classes=len(config["classes"]))
    model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(
        config["optimizer"], model.parameters(), config["lr"], config.get("weight_decay", 0.0)
    )
    start_epoch = _resume(model, optimizer)

    device = ray.train.torch.get_device()
    dtypes = {"image": torch.float32, "label": torch.int64}
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batch_size = config["batch_size"]

    for epoch in range(start_epoch, config["epochs"]):
        train_batches = train_shard.iter_torch_batches(
            batch_size=batch_size, dtypes=dtypes, device=device, local_shuffle_buffer_size=SHUFFLE_BUFFER
        )
        try:
            train_loss = train_one_epoch(model, optimizer, train_batches)
        except NonFiniteLossError as err:
            # a restart would diverge again: end this trial with the reason, let the sweep go on
            failure = dict.fromkeys(REPORTED_METRICS, float("nan"))  # same keys as any epoch's report
            failure.update(epoch=epoch + 1, failure=f"epoch {epoch + 1}: {err}")
            ray.train.report(failure)
            return
        val_batches = val_shard.iter_torch_batches(batch_size=batch_size, dtypes=dtypes, device=device)
        labels, scores = predict(model, val_batches)
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, **validation_metrics(labels, scores)}
        _report(metrics, model, optimizer, config, rank)


def _report(metrics: dict, model: nn.Module, optimizer, config: dict, rank: int) -> None:
    """Report metrics from every rank; rank 0 attaches the checkpoint."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        meta = {
            key: config[key]
            for key in ("backbone", "weights", "classes", "image_size", "mean", "std", "lr", "optimizer")
        }
        meta["metrics"] = metrics
        save_checkpoint(Path(folder), _unwrap(model), meta)
        torch.save(optimizer.state_dict(), Path(folder) / OPTIMIZER_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _resume(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the latest checkpoint after a restart; return the epoch to start from."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        _unwrap(model).load_state_dict(read_weights(Path(folder)))
        optimizer.load_state_dict(torch.load(Path(folder) / OPTIMIZER_FILE, weights_only=True))
        epoch = int(read_meta(Path(folder))["metrics"]["epoch"])
    log.info("resumed from checkpoint after epoch %d", epoch)
    return epoch
