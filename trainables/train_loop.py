"""The train loop: fine-tune one backbone, report every epoch, resume after a restart.

It runs on each Ray Train worker, or in the Tune trial's own process (`session.py`: where, and how
it reports). Everything the loop needs arrives as one `TrialConfig` (`trial_config.py`). Validation
metrics are computed over the whole validation split (it is not sharded), so rank 0's report is the trial's
true score. The fine-tuning policy (frozen start, warm-up, cosine, decay groups) lives in
`finetune.py`, mixed precision and the device-side normalisation in `precision.py`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainables.backbones import create_backbone
from trainables.checkpoint import (
    META_FILE,
    CheckpointMeta,
    newest_complete,
    read_meta,
    read_weights,
    save_checkpoint,
)
from trainables.diagnosis_metrics import reported_diagnosis_metrics, validation_report
from trainables.finetune import param_groups, set_backbone_frozen, set_learning_rates, train_mode
from trainables.inference import as_binary, malignant_indices, predict
from trainables.metrics import REPORTED_METRICS, validation_metrics
from trainables.optimizers import build_optimizer
from trainables.precision import Normalize, autocast_dtype, grad_scaler, in_layout
from trainables.resize import EVAL_RESIZE
from trainables.session import Session, checkpoint_at
from trainables.timing import mark
from trainables.trial_config import TrialConfig

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 512
STATE_FILE = "training_state.pt"
META_KEYS = (
    "backbone",
    "model",
    "weights",
    "task",
    "classes",
    "malignant",
    "image_size",
    "mean",
    "std",
    "lr",
    "optimizer",
)


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss). Reported as the trial's failure, not retried."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class Trainer:
    """One worker's model, optimizer and policy; `epoch()` trains one pass over its shard."""

    def __init__(self, config: TrialConfig, session: Session) -> None:
        self.config, self.world_size = config, session.world_size
        self.resumed_after_epoch = 0  # the checkpoint's epoch when this run restarted from one
        self.device = session.device()
        if self.device.type == "cpu":
            torch.set_num_threads(config.threads)  # Ray sets 1 thread per worker CPU
        self.dtype = autocast_dtype(config.precision, self.device)
        model = in_layout(create_backbone(config.backbone, config.weights, num_classes=len(config.classes)))
        # a frozen start leaves backbone parameters without gradients: DDP must expect that
        self.model = session.prepare_model(model, find_unused_parameters=config.freeze_epochs > 0)
        groups = param_groups(_unwrap(self.model), config.lr, config.weight_decay, config.backbone_lr_scale)
        self.optimizer = build_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
        self.scaler = grad_scaler(self.dtype, self.device)
        self.normalize = Normalize(config.mean, config.std, self.device)
        weights = config.class_weights
        self.class_weights = torch.tensor(weights, device=self.device) if weights else None
        rows_per_worker = config.train_rows / self.world_size
        self.steps_per_epoch = max(1, math.ceil(rows_per_worker / config.batch_size))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def epoch(self, epoch: int, batches, trial: str = "") -> tuple[float, float]:
        """Train one epoch; return (mean loss over all workers, images per second over all workers)."""
        cfg, model = self.config, self.model
        frozen = epoch < cfg.freeze_epochs
        set_backbone_frozen(_unwrap(model), frozen)
        model.train()  # the DDP wrapper too
        train_mode(_unwrap(model), frozen)
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, images
        started = time.perf_counter()
        for step, batch in enumerate(batches):
            position = epoch + min(step + 1, self.steps_per_epoch) / self.steps_per_epoch
            set_learning_rates(self.optimizer, position, cfg)
            labels = batch["label"]
            with self.autocast():
                logits = model(self.normalize(batch["image"]))
            loss = F.cross_entropy(
                logits.float(), labels, weight=self.class_weights, label_smoothing=cfg.label_smoothing
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # no host sync per step: a NaN spreads to every rank through DDP's gradient all-reduce,
            # so all ranks see it in the epoch's sum below and stop together
            total[0] += loss.detach().double() * len(labels)
            total[1] += len(labels)
            if step == 0:
                mark("first_step", trial)
        mark("last_step", trial)
        if self.world_size > 1:
            dist.all_reduce(total)
        loss_sum, images = total.tolist()
        mean_loss = loss_sum / max(images, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"non-finite training loss ({mean_loss}); lower the learning rate")
        return mean_loss, images / (time.perf_counter() - started)

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


def train_loop(train_loop_config: dict[str, Any], session: Session) -> None:
    config = TrialConfig(**train_loop_config)  # a missing or unknown field fails here, at once
    rank = session.rank
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    start_epoch, checkpoint, unreported = _resume_point(config, session)
    device = session.device()
    dtypes = {"image": torch.uint8, "label": torch.int64}

    def train_args(epoch: int) -> dict[str, Any]:
        return {
            "batch_size": config.batch_size,
            "dtypes": dtypes,
            "device": device,
            "local_shuffle_buffer_size": SHUFFLE_BUFFER,
            "local_shuffle_seed": config.seed * 1000 + epoch * 10 + rank,
        }

    # entered before the model is built: where the session makes batches ahead, the first are made
    # meanwhile
    with session.epochs("train", range(start_epoch, config.epochs), train_args) as epochs:
        trainer = Trainer(config, session)
        trainer.resumed_after_epoch = start_epoch
        if checkpoint is not None:
            metrics = _load(trainer, checkpoint)
            if unreported:  # its process died before the report was taken: report it now
                _report(metrics, trainer, session)
        val_shard = session.dataset("val")
        positive = malignant_indices(config.classes, config.malignant)
        for epoch, train_batches in epochs:
            try:
                train_loss, images_per_s = trainer.epoch(epoch, train_batches, session.name)
            except NonFiniteLossError as err:
                # a restart would diverge again: end this trial with the reason, let the sweep go on
                failure = dict.fromkeys(reported_metrics(config), float("nan"))  # same keys as any epoch's
                failure.update(epoch=epoch + 1, failure=f"epoch {epoch + 1}: {err}")
                session.report(failure, None)
                return
            val_batches = val_shard.iter_torch_batches(
                batch_size=config.batch_size, dtypes=dtypes, device=device
            )
            labels, probabilities = predict(trainer.model, val_batches, trainer.normalize, trainer.dtype)
            metrics = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_images_per_s": images_per_s,
                **validation_metrics(*as_binary(labels, probabilities, positive)),
            }
            if config.task == "diagnosis":
                metrics.update(validation_report(labels, probabilities, config.classes))
            _report(metrics, trainer, session)


def reported_metrics(config: TrialConfig) -> list[str]:
    """What each epoch reports besides `epoch` and the training speed."""
    extra = reported_diagnosis_metrics(config.classes) if config.task == "diagnosis" else []
    return [*REPORTED_METRICS, *extra]


def _report(metrics: dict, trainer: Trainer, session: Session) -> None:
    """Report metrics from every rank; rank 0 attaches the checkpoint."""
    if session.rank != 0:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as folder:
        meta = _checkpoint_meta(trainer, metrics)
        torch.save(trainer.state(), Path(folder) / STATE_FILE)
        save_checkpoint(Path(folder), _unwrap(trainer.model), meta)  # meta.json records both files
        session.report(metrics, Path(folder))


def _checkpoint_meta(trainer: Trainer, metrics: dict) -> CheckpointMeta:
    """What evaluate and predict need to score the model as validation did, and where it came from."""
    config = trainer.config
    return CheckpointMeta(
        **{key: _plain(getattr(config, key)) for key in META_KEYS},
        metrics=metrics,
        color=config.color,  # evaluate and predict apply it too
        resize=EVAL_RESIZE,  # and validate the same way
        threshold=metrics["val_threshold"],  # the decision threshold picked on validation data
        resumed_after_epoch=trainer.resumed_after_epoch,
        node_id=ray.get_runtime_context().get_node_id(),
    )


def _plain(value: Any) -> Any:
    """Tuples of the trial config as the lists that meta.json holds."""
    return list(value) if isinstance(value, tuple) else value


def _resume_point(config: TrialConfig, session: Session) -> tuple[int, ray.train.Checkpoint | None, bool]:
    """After a restart: (the epoch to start from, the checkpoint to load, whether its metrics were
    never reported); (0, None, False) for a fresh start. The session hands back the last checkpoint a
    report delivered; one that reached the storage but was not delivered (the process or its node
    died in between) is newer, and is taken when it is complete. Reads meta.json files only."""
    checkpoint = session.registered()
    epoch = _epoch_of(checkpoint) if checkpoint is not None else 0
    stored = newest_complete(config.checkpoints) if config.checkpoints else None
    if stored is not None and stored[0] > epoch:
        return stored[0], checkpoint_at(stored[1]), True
    return epoch, checkpoint, False


def _load(trainer: Trainer, checkpoint: ray.train.Checkpoint) -> dict:
    """Load a checkpoint's model and optimizer state; return its metrics."""
    with checkpoint.as_directory() as folder:
        _unwrap(trainer.model).load_state_dict(read_weights(Path(folder)))
        trainer.load_state(torch.load(Path(folder) / STATE_FILE, weights_only=True))
        metrics = read_meta(Path(folder)).metrics
    log.info("resumed from checkpoint after epoch %d", metrics["epoch"])
    return metrics


def _epoch_of(checkpoint: ray.train.Checkpoint) -> int:
    """The epoch a checkpoint was taken after, from its meta.json alone (no download)."""
    path = f"{checkpoint.path}/{META_FILE}"
    with checkpoint.filesystem.open_input_stream(path) as stream:
        return CheckpointMeta.from_json(stream.read().decode(), path).epoch
