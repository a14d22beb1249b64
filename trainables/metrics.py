"""Binary classification metrics, thresholds and the names they are reported under: the one
implementation the train loop, the leaderboard and the clinical evaluation share. Pure functions
over arrays, in numpy: each gives scikit-learn's number (the tests check every one against it), ten
times faster in the bootstrap, which calls them thousands of times, and without importing
scikit-learn into every Ray worker.

`labels` are 0/1 with 1 the positive (malignant) class; `scores` are P(malignant); a case is called
malignant when its score is >= the threshold.

Zero denominators: a ratio of counts whose denominator is zero (precision with no malignant calls,
sensitivity with no malignant cases, specificity with no benign ones, the F1 of both, a rate of the
ROC curve for an absent class) is 0.0, as scikit-learn's `zero_division=0`. What cannot be measured
earns no credit: a model that calls nothing malignant has no precision to show, and a resample
where a value is undefined counts against it rather than dropping out of a bootstrap interval.
The areas that need both classes (ROC-AUC, partial AUC), PR-AUC without a malignant case and the
specificity at a sensitivity no threshold reaches are NaN: they are undefined, not ratios of counts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

# binary_metrics' keys; the train loop reports each as val_<name>
BINARY_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")
# at_threshold's keys: the clinical names at a decision threshold
THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "precision", "sensitivity", "specificity", "f1")
# the metrics of the scores themselves, at no threshold (the evaluation's threshold-free group)
THRESHOLD_FREE_METRICS = (
    "roc_auc",
    "pr_auc",
    "partial_auc",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "brier",
    "ece",
)
# what the train loop reports every epoch (validation_metrics and the training loss), in the
# leaderboard's column order
REPORTED_METRICS = (
    "val_auc",
    "val_auc_low",
    "val_auc_high",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_specificity",
    "val_f1",
    "val_loss",
    "val_threshold",
    "val_recall_at_threshold",
    "val_specificity_at_threshold",
    "train_loss",
)
# the reported metrics a sweep may rank trials by (the scheduler's `metric`)
RANKING_METRICS = (
    "val_auc",
    "val_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_f1",
    "train_loss",
)

THRESHOLD_METHODS = ("youden", "sensitivity")
# the normal quantile of a two-sided 95% interval
Z_95 = 1.959963984540054
# the decision threshold when the data cannot place one (a single class): an untuned classifier's
UNTUNED_THRESHOLD = 0.5


def _binary(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels).astype(bool)


def _both_classes(labels: np.ndarray) -> bool:
    return bool(labels.any() and not labels.all())


def _ratio(numerator: float, denominator: float) -> float:
    """The zero-denominator rule of this module (see its docstring)."""
    return numerator / denominator if denominator else 0.0


def confusion_counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(true positives, false positives, false negatives, true negatives) at `threshold`: scikit-learn's
    confusion_matrix, counted directly (the bootstrap calls this thousands of times)."""
    cell = 2 * _binary(labels) + (np.asarray(scores) >= threshold)  # 0 tn, 1 fp, 2 fn, 3 tp
    tn, fp, fn, tp = np.bincount(cell, minlength=4)
    return int(tp), int(fp), int(fn), int(tn)


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The confusion-matrix metrics (THRESHOLD_METRICS) when `score >= threshold` is called malignant."""
    tp, fp, fn, tn = confusion_counts(labels, scores, threshold)
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "precision": _ratio(tp, tp + fp),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """BINARY_METRICS: accuracy, precision, recall (sensitivity), specificity, F1 at `threshold`, and
    ROC-AUC."""
    point = at_threshold(labels, scores, threshold)
    return {
        "accuracy": point["accuracy"],
        "precision": point["precision"],
        "recall": point["sensitivity"],
        "specificity": point["specificity"],
        "f1": point["f1"],
        "auc": roc_auc(labels, scores),
    }


def _curve_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when every distinct score, from the highest down, is the threshold:
    scikit-learn's roc_curve counts (drop_intermediate=False), in one sort."""
    labels, scores = _binary(labels), np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]  # the end of each run of ties
    return np.cumsum(sorted_labels)[last], np.cumsum(~sorted_labels)[last], sorted_scores[last]


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPR, TPR and thresholds (score >= threshold is positive) at every distinct score, from (0, 0)
    at threshold inf to (1, 1); the rate of an absent class is 0."""
    labels = _binary(labels)
    tp, fp, thresholds = _curve_counts(labels, scores)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return (
        np.r_[0.0, fp / max(negatives, 1)],
        np.r_[0.0, tp / max(positives, 1)],
        np.r_[np.inf, thresholds],
    )


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half); NaN with one class only."""
    labels = _binary(labels)
    if not _both_classes(labels):
        return float("nan")
    fpr, tpr, _ = roc_points(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def auc_interval(labels: np.ndarray, scores: np.ndarray, z: float = Z_95) -> tuple[float, float]:
    """DeLong's confidence interval for the ROC-AUC (95% by default): AUC +- z x its standard error,
    from the variance of each image's placement among the other class (DeLong, DeLong and
    Clarke-Pearson 1988; Sun and Xu's midrank form), clipped to [0, 1]. NaN with one class only,
    or with a single image of a class (no variance to estimate)."""
    labels, scores = _binary(labels), np.asarray(scores, dtype=np.float64)
    positive, negative = scores[labels], scores[~labels]
    m, n = len(positive), len(negative)
    if m < 2 or n < 2:
        return float("nan"), float("nan")
    ranks = _midranks(np.r_[positive, negative])
    above = (ranks[:m] - _midranks(positive)) / n  # per malignant image: the share of benign below it
    below = 1 - (ranks[m:] - _midranks(negative)) / m  # per benign image: the share of malignant above
    auc = float(above.mean())
    error = float(np.sqrt(above.var(ddof=1) / m + below.var(ddof=1) / n))
    return max(0.0, auc - z * error), min(1.0, auc + z * error)


def pr_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every distinct score, from the highest threshold down (each threshold
    calls at least one case malignant); recall is 0 without a malignant case."""
    labels = _binary(labels)
    tp, fp, _ = _curve_counts(labels, scores)
    return tp / max(int(labels.sum()), 1), tp / (tp + fp)


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: the step-wise area under the precision-recall curve (scikit-learn's
    average_precision_score); NaN with no malignant case."""
    labels = _binary(labels)
    if not labels.any():
        return float("nan")
    recall, precision = pr_points(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def partial_auc(labels: np.ndarray, scores: np.ndarray, min_sensitivity: float = 0.8) -> float:
    """Area under the ROC curve above `min_sensitivity` (ISIC 2024: range 0 to 1 - min_sensitivity),
    exact for the piecewise-linear curve; NaN with one class only. It is the area at false positive
    rates up to 1 - min_sensitivity of the flipped problem (benign the positive class), cut there as
    scikit-learn's roc_auc_score(max_fpr=...) cuts it (which would also rescale it)."""
    labels = _binary(labels)
    if not _both_classes(labels):
        return float("nan")
    fpr, tpr, _ = roc_points(labels, scores)
    x, y, cut = 1 - tpr[::-1], 1 - fpr[::-1], 1 - min_sensitivity  # the flipped curve, x ascending
    stop = np.searchsorted(x, cut, "right")
    if stop < len(x):  # end the curve on the cut, interpolated within its segment
        y = np.r_[y[:stop], np.interp(cut, x[stop - 1 : stop + 1], y[stop - 1 : stop + 1])]
        x = np.r_[x[:stop], cut]
    return float(np.trapezoid(y, x))


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """The best sensitivity among thresholds whose specificity is at least `specificity`."""
    fpr, tpr, _ = roc_points(labels, scores)
    return float(tpr[fpr <= 1 - specificity + 1e-12].max())


def specificity_at_sensitivity(labels: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The best specificity among thresholds whose sensitivity is at least `sensitivity`; NaN when
    none is (no malignant case)."""
    fpr, tpr, _ = roc_points(labels, scores)
    reached = tpr >= sensitivity - 1e-12
    return float((1 - fpr[reached]).max()) if reached.any() else float("nan")


def brier(labels: np.ndarray, scores: np.ndarray) -> float:
    """The mean squared difference between P(malignant) and the label (lower is better): scikit-learn's
    brier_score_loss without its input checks."""
    return float(np.mean((np.asarray(scores, dtype=np.float64) - _binary(labels)) ** 2))


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = 10):
    """Per equal-width bin of P(malignant): count, mean predicted probability, observed frequency
    (scikit-learn's calibration_curve, with the empty bins kept and the counts)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = np.clip(np.digitize(scores, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, weights=scores, minlength=bins) / np.maximum(count, 1)
    observed = np.bincount(which, weights=labels, minlength=bins) / np.maximum(count, 1)
    return count, predicted, observed


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """The count-weighted mean gap between predicted and observed frequency over the bins."""
    count, predicted, observed = calibration_bins(labels, scores, bins)
    return float(np.sum(count * np.abs(predicted - observed)) / max(count.sum(), 1))


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    """Binary cross-entropy with the scores clipped to [eps, 1 - eps]. Not scikit-learn's: it clips
    at the scores' float resolution, which for float32 scores of exactly 0 or 1 gives another value."""
    labels = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


class NoThreshold(ValueError):
    """The threshold data hold one class only: no threshold trades sensitivity for specificity."""


def choose_threshold(
    labels: np.ndarray, scores: np.ndarray, method: str = "youden", sensitivity: float = 0.9
) -> float:
    """A decision threshold picked on validation data: the one that maximises Youden's J =
    sensitivity + specificity - 1 (the highest such), or the highest threshold that still reaches
    `sensitivity` (a screening operating point). Raises NoThreshold when `labels` hold one class."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; known: {', '.join(THRESHOLD_METHODS)}")
    labels = _binary(labels)
    if not _both_classes(labels):
        only = "malignant" if labels.any() else "benign"
        raise NoThreshold(f"the threshold data hold {len(labels)} {only} images and no other class")
    fpr, tpr, thresholds = roc_points(labels, scores)
    if method == "youden":
        return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])
    return float(thresholds[np.argmax(tpr >= sensitivity - 1e-12)])


def validation_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """An epoch's validation report (REPORTED_METRICS but the training loss): BINARY_METRICS at 0.5,
    the AUC's 95% interval (`auc_interval`), the log loss, and the Youden's J threshold picked on
    these same labels with the sensitivity and specificity there (UNTUNED_THRESHOLD on a fold of one
    class, so that training goes on)."""
    metrics = {f"val_{name}": value for name, value in binary_metrics(labels, scores).items()}
    metrics["val_auc_low"], metrics["val_auc_high"] = auc_interval(labels, scores)
    metrics["val_loss"] = log_loss(labels, scores)
    try:
        threshold = choose_threshold(labels, scores, "youden")
    except NoThreshold:
        threshold = UNTUNED_THRESHOLD
    point = at_threshold(labels, scores, threshold)
    metrics["val_threshold"] = threshold
    metrics["val_recall_at_threshold"] = point["sensitivity"]
    metrics["val_specificity_at_threshold"] = point["specificity"]
    return metrics


def bootstrap(
    labels: np.ndarray,
    scores: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of every value `statistic` returns, resampling the images of
    each class separately (so each resample keeps the class counts). `scores` holds a row per image:
    P(malignant), or the probabilities of every class."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    rng = np.random.default_rng(seed)
    # the highest label first: the malignant cases, then the benign ones, for two classes
    members = [np.flatnonzero(labels == label) for label in np.unique(labels)[::-1]]
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        index = np.concatenate([rng.choice(member, len(member)) for member in members])
        for name, value in statistic(labels[index], scores[index]).items():
            draws.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():  # a value undefined in every resample: its interval is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {
            name: tuple(float(v) for v in np.nanpercentile(values, [tail, 100 - tail]))
            for name, values in draws.items()
        }
