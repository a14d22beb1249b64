"""Run an experiment spec as a Ray Tune grid with ASHA early stopping; write the leaderboard.

    python -m orchestrator.sweep [SPEC.yaml] [--set KEY=VALUE ...] [--storage DIR] [--address ADDR]

Without SPEC it runs the embedded default, `experiments/default.yaml`. Results land in
`<storage>/<name>-<time>/`: the leaderboard (CSV and Markdown), TensorBoard event files (HParams
tab: the leaderboard; Scalars: the curves) and the checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from orchestrator import leaderboard
from orchestrator.config import Spec, load_spec
from orchestrator.errors import UserError, run_cli
from orchestrator.prepare import prepare, read_manifest
from orchestrator.sources import read_source
from orchestrator.top_trials import evaluate_top_trials
from orchestrator.trial import CHECKPOINTS, run_trial, trial_image_size
from trainables.backbones import WeightSource, check_backbone, check_weights

log = logging.getLogger(__name__)

DRIVER_MEMORY = 64 * 1024**2  # the trial function only drives a trainer: no CPU, a token of memory
DATA_CPUS_PER_TRIAL = 1.0  # left free per trial for Ray Data's decode + augment


class RecordingASHA(ASHAScheduler):
    """ASHA that remembers which trials it stopped before their last epoch, and never stops a trial
    at its last epoch: such a trial ends by itself, so that its Train controller releases its
    placement group (a trial actor killed by Tune can leave it reserved, and the next trial's Ray
    Data then waits for a CPU forever)."""

    def __init__(self, epochs: int, **kwargs: Any) -> None:
        super().__init__(max_t=epochs + 1, **kwargs)
        self.epochs = epochs
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if result.get(self._time_attr, 0) >= self.epochs:
            return TrialScheduler.CONTINUE  # the loop returns after its last epoch
        if decision == TrialScheduler.STOP:
            self.stopped_early.add(trial.trial_id)
        return decision


def preflight(spec: Spec) -> None:
    """Everything that can be checked before Ray starts: backbones and their weights. A weights
    mapping may name backbones the grid does not search (a narrowed grid), but no unknown ones."""
    if isinstance(spec.train.weights, dict):
        for name in spec.train.weights:
            if name != "default":
                check_backbone(name)
    for backbone in spec.backbones():
        check_weights(backbone, WeightSource.parse(spec.train.weights_for(backbone)))


def prepared_dataset(spec: Spec) -> Path:
    """The prepared dataset: the spec's own, or `source` prepared once into the cache."""
    data = spec.data
    if data.prepared is not None:
        manifest = read_manifest(data.prepared)
        if manifest["folds"] != data.folds:
            raise UserError(
                f"{data.prepared} was prepared with {manifest['folds']} folds, the spec asks for "
                f"{data.folds}; set data.folds: {manifest['folds']} or prepare again"
            )
        return data.prepared
    size = max(trial_image_size(spec, backbone) for backbone in spec.backbones())
    out = data.cache / f"{data.source.name}-{size}px-{data.folds}f-s{data.seed}-{_fingerprint(spec)}"
    if (out / "manifest.json").exists():
        log.info("using prepared dataset %s", out)
        return out
    prepare(data.source, out, size, data.folds, data.seed, layout=data.layout, malignant=data.malignant_set)
    return out


def _fingerprint(spec: Spec) -> str:
    """Changes when any image is added, removed, renamed, relabelled or rewritten."""
    data = spec.data
    layout, _, images = read_source(data.source, data.layout, data.malignant_set)
    listing = f"{layout}:{sorted(data.malignant or [])}\n" + "".join(
        f"{image.image_id}:{image.label}:{image.path.stat().st_size}\n" for image in images
    )
    return hashlib.sha256(listing.encode()).hexdigest()[:10]


def check_gpus(spec: Spec, local: bool) -> None:
    """A local Ray instance without GPUs would leave GPU trials pending forever: say so instead."""
    if spec.resources.gpus_per_worker and not ray.cluster_resources().get("GPU"):
        message = (
            "the spec asks for GPUs (resources.gpus_per_worker) but the Ray cluster has none; "
            "to train on CPU: --set resources.gpus_per_worker=0"
        )
        if local:
            raise UserError(message)
        log.warning("%s (waiting for an autoscaler to add GPU nodes)", message)


def concurrent_trials(spec: Spec) -> int:
    """How many trials fit the cluster at once, each with its workers plus room for Ray Data."""
    if spec.resources.max_concurrent_trials:
        return spec.resources.max_concurrent_trials
    res, cluster = spec.resources, ray.cluster_resources()
    fits = int(cluster.get("CPU", 1) // (res.workers_per_trial * res.cpus_per_worker + DATA_CPUS_PER_TRIAL))
    if res.gpus_per_worker:
        fits = min(fits, int(cluster.get("GPU", 0) // (res.workers_per_trial * res.gpus_per_worker)))
    return max(1, fits)


def param_space(spec: Spec) -> dict[str, Any]:
    """Every searchable key as a grid axis, fixed ones with a single value, so that TensorBoard's
    HParams table shows the whole configuration of each trial."""
    return {key: tune.grid_search(values) for key, values in spec.searched().items()}


def _trial_dirname(trial) -> str:
    return trial.trial_id


def scheduler_for(spec: Spec) -> TrialScheduler:
    sched = spec.scheduler
    if sched.type == "fifo":
        return FIFOScheduler()
    return RecordingASHA(
        spec.train.epochs,
        time_attr="training_iteration",
        grace_period=min(sched.grace_period, spec.train.epochs),
        reduction_factor=sched.reduction_factor,
    )


def run_sweep(spec: Spec, address: str | None = None) -> tuple[Path, Any]:
    """Run the spec's grid; return the run folder and the leaderboard frame."""
    if "://" in spec.storage:
        raise UserError("remote storage is not supported yet; use a local folder for 'storage'")
    preflight(spec)
    prepared = prepared_dataset(spec)
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(spec.storage) / run_name
    if not ray.is_initialized():
        ray.init(address=address, configure_logging=False)
    check_gpus(spec, local=address is None)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, prepared=str(prepared), run_dir=str(run_dir)),
        {"cpu": 0, "memory": DRIVER_MEMORY},
    )
    scheduler = scheduler_for(spec)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.scheduler.metric,
            mode=spec.scheduler.resolved_mode,
            scheduler=scheduler,
            max_concurrent_trials=concurrent_trials(spec),
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(name=run_name, storage_path=spec.storage, verbose=1),
    )
    log.info("sweep %s: %d trials -> %s", run_name, len(spec.grid()), run_dir)
    results = tuner.fit()
    stopped = getattr(scheduler, "stopped_early", set())
    frame = leaderboard.build(results, spec, run_dir / CHECKPOINTS, stopped)
    record = {"spec": spec.model_dump(mode="json"), "prepared": str(prepared), "ray": ray.__version__}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))  # what this run was, to reproduce it
    frame = evaluate_top_trials(frame, spec, prepared, run_dir)
    leaderboard.write(frame, run_dir)
    if len(spec.data.val_folds) > 1:
        cv = leaderboard.by_configuration(frame, spec.scheduler.metric, spec.scheduler.resolved_mode)
        leaderboard.write(cv, run_dir, "leaderboard-cv")
    return run_dir, frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("spec", nargs="?", help="experiment spec (default: experiments/default.yaml)")
    parser.add_argument("--storage", help="where run folders go (overrides the spec's 'storage')")
    parser.add_argument("--address", help="Ray cluster to join, e.g. 'auto' (default: start a local one)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, e.g. --set train.epochs=3 --set 'search.lr=[1e-3,3e-4]' (repeatable)",
    )
    args = parser.parse_args(argv)
    spec = load_spec(args.spec, args.set)
    if args.storage:
        spec = spec.model_copy(update={"storage": str(Path(args.storage).resolve())})
    run_dir, frame = run_sweep(spec, args.address)
    metric = spec.scheduler.metric
    print(f"\nLeaderboard ({metric}, best first) - full table: {run_dir / 'leaderboard.md'}\n")
    print(leaderboard.to_markdown(leaderboard.summary(frame, metric)))
    if len(spec.data.val_folds) > 1:
        cv = leaderboard.by_configuration(frame, metric, spec.scheduler.resolved_mode)
        print(f"\nCross-validation over folds {spec.data.val_folds} (final epoch, mean and std):\n")
        print(leaderboard.to_markdown(cv))
    print(f"TensorBoard: tensorboard --logdir {run_dir}")
    failed = int((frame["status"] == "failed").sum())
    if failed == len(frame):
        print("every trial failed; see the 'error' column of the leaderboard")
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
