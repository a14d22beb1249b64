"""What a clinical evaluation asks of the metrics: the operating points it targets, the
threshold-free group. The metrics themselves, the decision thresholds and the bootstrap intervals
are `trainables.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainables.metrics import (
    brier,
    expected_calibration_error,
    partial_auc,
    pr_auc,
    roc_auc,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)


@dataclass(frozen=True)
class Targets:
    """Operating points a screening study asks about."""

    fixed_specificity: float = 0.8  # report sensitivity at this specificity
    fixed_sensitivity: float = 0.9  # report specificity at this sensitivity
    min_sensitivity: float = 0.8  # partial AUC above this sensitivity (the ISIC 2024 metric)
    bins: int = 10  # calibration bins


@dataclass(frozen=True)
class Options:
    """How a checkpoint is evaluated. Its defaults are the only ones: the spec's `evaluation`
    section and the `isic-evaluate` options take theirs from here."""

    threshold: str = "youden"
    target_sensitivity: float = 0.9
    targets: Targets = Targets()
    tta: bool = False
    bootstrap: int = 1000
    seed: int = 0


def threshold_free(labels: np.ndarray, scores: np.ndarray, targets: Targets = Targets()) -> dict[str, float]:
    """Metrics of the scores themselves, at no particular threshold: THRESHOLD_FREE_METRICS."""
    return {
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": pr_auc(labels, scores),
        "partial_auc": partial_auc(labels, scores, targets.min_sensitivity),
        "sensitivity_at_specificity": sensitivity_at_specificity(labels, scores, targets.fixed_specificity),
        "specificity_at_sensitivity": specificity_at_sensitivity(labels, scores, targets.fixed_sensitivity),
        "brier": brier(labels, scores),
        "ece": expected_calibration_error(labels, scores, targets.bins),
    }
