"""Clinical evaluation metrics, decision thresholds and bootstrap confidence intervals.

Pure functions over `labels` (0/1, 1 = malignant) and `scores` (P(malignant)); each is checked
against scikit-learn or a hand-computed case in the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainables.metrics import roc_auc, roc_points

THRESHOLD_METHODS = ("youden", "sensitivity")


@dataclass(frozen=True)
class Targets:
    """Operating points a screening study asks about."""

    fixed_specificity: float = 0.8  # report sensitivity at this specificity
    fixed_sensitivity: float = 0.9  # report specificity at this sensitivity
    min_sensitivity: float = 0.8  # partial AUC above this sensitivity (the ISIC 2024 metric)
    bins: int = 10  # calibration bins


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: the step-wise area under the precision-recall curve."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    fpr, tpr, _ = roc_points(labels, scores)
    positives, negatives = labels.sum(), (~labels).sum()
    tp, fp = tpr[1:] * positives, fpr[1:] * negatives
    precision = tp / np.maximum(tp + fp, 1)
    return float(np.sum(np.diff(tpr) * precision))


def partial_auc(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float = 0.8) -> float:
    """Area under the ROC curve above `min_sensitivity` (ISIC 2024: range 0 to 1 - min_sensitivity),
    exact for the piecewise-linear curve."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = roc_points(labels, scores)
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr[:-1], fpr[1:], tpr[:-1], tpr[1:], strict=True):
        low, high = y0 - min_sensitivity, y1 - min_sensitivity
        if x1 == x0 or (low <= 0 and high <= 0):
            continue
        if low >= 0 and high >= 0:
            area += (x1 - x0) * (low + high) / 2
        else:  # the segment crosses the line: only the part above it counts
            above = max(low, high)
            area += (x1 - x0) * above / (above - min(low, high)) * above / 2
    return float(area)


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """The best sensitivity among thresholds whose specificity is at least `specificity`."""
    fpr, tpr, _ = roc_points(labels, scores)
    return float(tpr[fpr <= 1 - specificity + 1e-12].max())


def specificity_at_sensitivity(labels: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The best specificity among thresholds whose sensitivity is at least `sensitivity`."""
    fpr, tpr, _ = roc_points(labels, scores)
    return float((1 - fpr[tpr >= sensitivity - 1e-12]).max())


def brier(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean((np.asarray(scores, dtype=np.float64) - np.asarray(labels)) ** 2))


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = 10):
    """Per equal-width bin of P(malignant): count, mean predicted probability, observed frequency."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = np.clip(np.digitize(scores, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=scores, minlength=bins) / np.maximum(count, 1)
    observed = np.bincount(which, weights=labels, minlength=bins) / np.maximum(count, 1)
    return count, predicted, observed


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    count, predicted, observed = calibration_bins(labels, scores, bins)
    return float(np.sum(count * np.abs(predicted - observed)) / max(count.sum(), 1))


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The confusion-matrix metrics when `score >= threshold` is called malignant."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    tp, fp = int((labels & predicted).sum()), int((~labels & predicted).sum())
    fn, tn = int((labels & ~predicted).sum()), int((~labels & ~predicted).sum())

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    precision = ratio(tp, tp + fp)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": ratio(tp + tn, len(labels)),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": f1,
    }


def threshold_free(labels: np.ndarray, scores: np.ndarray, targets: Targets = Targets()) -> dict[str, float]:
    """Metrics of the scores themselves, at no particular threshold."""
    return {
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": pr_auc(labels, scores),
        "partial_auc": partial_auc(labels, scores, targets.min_sensitivity),
        "sensitivity_at_specificity": sensitivity_at_specificity(labels, scores, targets.fixed_specificity),
        "specificity_at_sensitivity": specificity_at_sensitivity(labels, scores, targets.fixed_sensitivity),
        "brier": brier(labels, scores),
        "ece": expected_calibration_error(labels, scores, targets.bins),
    }


def choose_threshold(
    labels: np.ndarray, scores: np.ndarray, method: str = "youden", sensitivity: float = 0.9
):
    """A decision threshold picked on validation data: Youden's J, or the highest threshold that
    still reaches `sensitivity` (a screening operating point)."""
    fpr, tpr, thresholds = roc_points(labels, scores)
    if method == "youden":
        return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])
    if method == "sensitivity":
        return float(thresholds[np.argmax(tpr >= sensitivity - 1e-12)])
    raise ValueError(f"unknown threshold method {method!r}; known: {', '.join(THRESHOLD_METHODS)}")


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
