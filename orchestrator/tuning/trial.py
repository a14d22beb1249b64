"""One Tune trial: build the trial's datasets and train on them, in this process or on Ray Train
workers (`resources.train_in`).

Tune calls `run_trial(config)` with the searched values. In this process, the loop reports each epoch
to Tune itself; on Ray Train workers (a TorchTrainer, the Train V2 pattern), `TuneReportCallback`
forwards rank 0's reports. Either way ASHA sees every epoch and can stop the trial.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import ray.data
import ray.tune
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.config import Spec, split_of
from orchestrator.data.dataset_format import Manifest, task_labels
from orchestrator.data.pipeline import (
    HeldSplit,
    Split,
    build_datasets,
    class_weights,
    oversample_factors,
    train_class_counts,
)
from trainables.entry import train_in_trial, train_loop_per_worker
from trainables.registry import InputConfig, timm_name
from trainables.storage import ray_storage
from trainables.timing import mark
from trainables.trial_config import TrialConfig

CHECKPOINTS = "checkpoints"
KEPT_CHECKPOINTS = 2  # per trial, the best by the scheduler's metric (and always the newest)


# the spec's `train` fields a trial config carries as they are
POLICY_FIELDS = {
    "epochs",
    "seed",
    "freeze_epochs",
    "backbone_lr_scale",
    "warmup_epochs",
    "schedule",
    "label_smoothing",
    "precision",
}


def trial_image_size(spec: Spec, native: InputConfig) -> int:
    """The spec's image size, else the backbone's native one."""
    return spec.data.image_size or native.input_size


def trial_config(
    spec: Spec, config: dict[str, Any], manifest: Manifest, checkpoints: str, inputs: dict[str, InputConfig]
) -> TrialConfig:
    """Everything the train loop needs: Tune's searched `config` with the spec, the dataset and
    `inputs`, each backbone's input config (`backbones.input_config`, read by the driver: a trial's
    actor never imports timm)."""
    backbone, train = config["backbone"], spec.train
    split = split_of(config)
    normalisation = inputs[backbone]
    task = spec.data.task
    labels = task_labels(manifest, task, spec.data.prepared or "the prepared dataset")
    counts = train_class_counts(manifest, split["val_fold"], spec.data.test_fold, split["val_source"], task)
    balance = spec.data.balance
    per_epoch = oversample_factors(counts) if balance == "oversample" else dict.fromkeys(counts, 1.0)
    return TrialConfig(
        backbone=backbone,
        lr=config["lr"],
        optimizer=config["optimizer"],
        batch_size=config["batch_size"],
        weight_decay=config["weight_decay"],
        color=config.get("color", "none"),
        val_fold=split["val_fold"],
        val_source=split["val_source"],
        model=timm_name(backbone),
        weights=train.weights_for(backbone),
        task=task,
        classes=tuple(labels.classes),
        malignant=tuple(labels.malignant),
        image_size=trial_image_size(spec, normalisation),
        mean=tuple(normalisation.mean),
        std=tuple(normalisation.std),
        train_rows=round(sum(counts[label] * per_epoch[label] for label in counts)),
        class_weights=tuple(class_weights(counts)) if balance == "class_weight" else None,
        **train.model_dump(include=POLICY_FIELDS),
        threads=spec.resources.torch_threads,
        checkpoints=checkpoints,
    )


def run_trial(
    config: dict[str, Any],
    spec: Spec,
    prepared: str,
    manifest: Manifest,
    run_uri: str,
    inputs: dict[str, InputConfig],
    rows: ray.data.Dataset | None = None,
    splits: dict[Split, HeldSplit] | None = None,
) -> None:
    """`prepared` and `run_uri` are local paths or URIs that every node of the cluster can reach;
    `inputs` holds each backbone's input config; `rows` or `splits`, when the driver holds them
    (`pipeline.shared_rows`, `pipeline.held_splits`), are read instead of `prepared`."""
    trial_id = ray.tune.get_context().get_trial_id()
    mark("trial_start", trial_id)
    trial = trial_config(spec, config, manifest, f"{run_uri}/{CHECKPOINTS}/{trial_id}", inputs)
    held = splits[(trial.val_fold, trial.val_source)] if splits else None
    datasets = build_datasets(
        held or rows or prepared,
        val_fold=trial.val_fold,
        val_source=trial.val_source,
        color=trial.color,
        size=trial.image_size,
        augment=spec.augment,
        balance=spec.data.balance,
        seed=spec.train.seed,
        test_fold=spec.data.test_fold,
        manifest=manifest,
        task=trial.task,
    )
    resources = spec.resources
    if resources.in_trial:
        kept = (spec.scheduler.metric, spec.scheduler.resolved_mode, KEPT_CHECKPOINTS)
        train_in_trial(asdict(trial), datasets, trial_id, kept, use_gpu=resources.gpus_per_worker > 0)
        return
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    storage_path, storage_filesystem = ray_storage(f"{run_uri}/{CHECKPOINTS}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(trial),  # rebuilt by the loop: see trial_config.py
        scaling_config=ScalingConfig(
            num_workers=resources.workers_per_trial,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=trial_id,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=KEPT_CHECKPOINTS,
                checkpoint_score_attribute=spec.scheduler.metric,
                checkpoint_score_order=spec.scheduler.resolved_mode,
            ),
        ),
    )
    trainer.fit()
