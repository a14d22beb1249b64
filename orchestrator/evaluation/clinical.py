"""What a clinical evaluation asks of the metrics: the operating points it targets, the
threshold-free group, and bootstrap confidence intervals. The metrics themselves (and the decision
thresholds) are `trainables.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
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


def bootstrap(
    labels: np.ndarray,
    scores: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of every value `statistic` returns, resampling malignant
    and benign cases separately (so each resample keeps the class counts)."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        index = np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))]
        for name, value in statistic(labels[index], scores[index]).items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {
        name: tuple(float(v) for v in np.nanpercentile(values, [tail, 100 - tail]))
        for name, values in draws.items()
    }
