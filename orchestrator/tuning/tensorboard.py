"""What TensorBoard shows of a sweep: each trial's curves under the project's own tags (`val/auc`,
`train/loss`, ...; a diagnosis task's under `diagnosis/`: `diagnosis/balanced_accuracy`, ...), and
in HParams one session per trial with its configuration, weight source, status and best-epoch
metrics, named by leaderboard rank so that the table lists trials in the leaderboard's order. Ray's
own counters (`ray/tune/...`: iterations, time, done flags) are not written."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray.tune.logger import TBXLoggerCallback

from orchestrator.config import Spec
from orchestrator.storage import Storage

# reported metric -> tag; the threshold-dependent ones say at which threshold
TAGS = {
    "val_auc": "val/auc",
    "val_auc_low": "val/auc_95ci_low",
    "val_auc_high": "val/auc_95ci_high",
    "val_recall_at_threshold": "val/sensitivity_at_threshold",
    "val_specificity_at_threshold": "val/specificity_at_threshold",
    "val_threshold": "val/threshold",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy_at_0.5",
    "val_precision": "val/precision_at_0.5",
    "val_recall": "val/sensitivity_at_0.5",
    "val_specificity": "val/specificity_at_0.5",
    "val_f1": "val/f1_at_0.5",
    "train_loss": "train/loss",
    "train_images_per_s": "train/images_per_s",
}
HPARAMS = "hparams"  # the run folder's sub-folder of leaderboard sessions
# what HParams shows of each trial's best epoch (the leaderboard's `best_` columns)
BEST_EPOCH = (
    "val_auc",
    "val_auc_low",
    "val_auc_high",
    "val_recall_at_threshold",
    "val_specificity_at_threshold",
    "val_loss",
    "train_loss",
)


class TrialCurves(TBXLoggerCallback):
    """Tune's TensorBoard logger, writing only the project's metrics, under `TAGS`, per epoch, and
    no HParams of its own (`write_hparams` writes them once the leaderboard is ranked)."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        epoch = result.get("epoch")
        if epoch is None:
            return
        writer = self._trial_writer[trial]
        for metric in [*TAGS, *diagnosis_metrics(result)]:
            value = result.get(metric)
            if _number(value):
                writer.add_scalar(tag_of(metric), float(value), global_step=int(epoch))
        writer.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        if trial in self._trial_writer:
            self._trial_writer.pop(trial).close()
            self._trial_result.pop(trial, None)


def diagnosis_metrics(reported: Any) -> list[str]:
    """The metrics of a diagnosis task among `reported` (a result, or the leaderboard's reported
    names): the validation metrics without a tag of their own."""
    return [name for name in reported if name.startswith("val_") and name not in TAGS]


def tag_of(metric: str) -> str:
    """A reported metric's tag: `TAGS`, or `diagnosis/<name>` (`_95ci_low` and `_95ci_high` for
    the bounds of its interval)."""
    if metric in TAGS:
        return TAGS[metric]
    name = metric.removeprefix("val_")
    for end in ("_low", "_high"):
        if name.endswith(end):
            name = f"{name.removesuffix(end)}_95ci{end}"
    return f"diagnosis/{name}"


def write_hparams(frame: pd.DataFrame, spec: Spec, run_dir: Path, run: Storage | None = None) -> None:
    """One HParams session per leaderboard row in `<run>/hparams/<rank>-<trial>`: the grid's varying
    keys (and the backbone), the weight source and the status; as metrics, the best epoch's values
    under the curves' own tags (in Time Series, a dot at that epoch beside the trial's curve) and any
    test ones (`test/roc_auc`, ...). Sessions written before (a run finished again after --resume,
    its ranks changed) are removed first, here and in the run's remote storage `run`."""
    from tensorboardX import SummaryWriter

    shutil.rmtree(run_dir / HPARAMS, ignore_errors=True)
    if run is not None and run.remote:
        run.delete_folder(HPARAMS)
    varying = [key for key in spec.varying() if key != "backbone" and key in frame]
    keys = ["backbone", *varying, "weights", "status"]
    # a diagnosis task's best-epoch metrics, without the bounds of their intervals
    best = [c.removeprefix("best_") for c in frame if c.startswith("best_val_")]
    diagnosis = [name for name in diagnosis_metrics(best) if not name.endswith(("_low", "_high"))]
    with SummaryWriter(str(run_dir / HPARAMS)) as writer:
        for position, (_, row) in enumerate(frame.iterrows(), start=1):
            hparams = {key: _plain(row[key]) for key in keys if key in row and pd.notna(row[key])}
            metrics = {tag_of(metric): row.get(f"best_{metric}") for metric in (*BEST_EPOCH, *diagnosis)}
            metrics.update({f"test/{c.removeprefix('test_')}": row[c] for c in frame if _is_test_value(c)})
            values = {tag: float(value) for tag, value in metrics.items() if _number(value)}
            step = int(row["best_epoch"]) if _number(row.get("best_epoch")) else None
            name = f"{int(row.get('rank', position)):02d}-{row['trial_id']}"
            writer.add_hparams(hparams, values, name=name, global_step=step)


def _number(value: Any) -> bool:
    real = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return real and not math.isnan(value)


def _is_test_value(column: str) -> bool:
    return column.startswith("test_") and not column.endswith(("_low", "_high", "_error"))


def _plain(value: Any) -> Any:
    """HParams takes only str, bool, int and float."""
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (str, bool, int, float)) else str(value)
