"""One Tune trial: build the trial's datasets and run a TorchTrainer over them (Train V2 pattern).

Tune calls `run_trial(config)` with the searched values; `TuneReportCallback` forwards rank 0's
per-epoch reports to Tune, so ASHA sees every epoch and can stop the trial.
"""

from __future__ import annotations

from typing import Any

import ray.tune
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.config import Spec, split_of
from orchestrator.data.pipeline import build_datasets, class_weights, oversample_factors, train_class_counts
from trainables.backbones import input_config, timm_name
from trainables.train_loop import train_loop_per_worker

CHECKPOINTS = "checkpoints"


def trial_image_size(spec: Spec, backbone: str) -> int:
    """The spec's image size, else the backbone's native one."""
    return spec.data.image_size or input_config(backbone).input_size


def worker_config(spec: Spec, config: dict[str, Any], manifest: dict) -> dict[str, Any]:
    """Everything the train loop needs, as plain values."""
    backbone, train = config["backbone"], spec.train
    config = {**config, **split_of(config)}
    normalisation = input_config(backbone)
    counts = train_class_counts(manifest, config["val_fold"], spec.data.test_fold, config["val_source"])
    balance = spec.data.balance
    per_epoch = oversample_factors(counts) if balance == "oversample" else dict.fromkeys(counts, 1.0)
    return {
        **config,
        "model": timm_name(backbone),
        "weights": train.weights_for(backbone),
        "epochs": train.epochs,
        "seed": train.seed,
        "classes": manifest["classes"],
        "image_size": trial_image_size(spec, backbone),
        "mean": list(normalisation.mean),
        "std": list(normalisation.std),
        "train_rows": round(sum(counts[label] * per_epoch[label] for label in counts)),
        "class_weights": class_weights(counts) if balance == "class_weight" else None,
        "threads": spec.resources.torch_threads,
        "color": config.get("color", "none"),
        **train.model_dump(include={"freeze_epochs", "backbone_lr_scale", "warmup_epochs", "schedule"}),
        **train.model_dump(include={"label_smoothing", "precision"}),
    }


def run_trial(config: dict[str, Any], spec: Spec, prepared: str, manifest: dict, run_uri: str) -> None:
    """`prepared` and `run_uri` are local paths or URIs that every node of the cluster can reach."""
    trial_id = ray.tune.get_context().get_trial_id()
    loop_config = worker_config(spec, config, manifest)
    loop_config["checkpoints"] = f"{run_uri}/{CHECKPOINTS}/{trial_id}"  # where a restart looks for one
    datasets = build_datasets(
        prepared,
        val_fold=loop_config["val_fold"],
        val_source=loop_config["val_source"],
        color=loop_config["color"],
        size=loop_config["image_size"],
        augment=spec.augment,
        balance=spec.data.balance,
        seed=spec.train.seed,
        test_fold=spec.data.test_fold,
        manifest=manifest,
    )
    resources = spec.resources
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=resources.workers_per_trial,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=trial_id,
            storage_path=f"{run_uri}/{CHECKPOINTS}",
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=spec.scheduler.metric,
                checkpoint_score_order=spec.scheduler.resolved_mode,
            ),
        ),
    )
    trainer.fit()
