"""Binary classification metrics as pure functions over arrays (checked against scikit-learn).

`labels` are 0/1 with 1 the positive (malignant) class; `scores` are P(malignant).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _confusion(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    tp = int((labels & predicted).sum())
    fp = int((~labels & predicted).sum())
    fn = int((labels & ~predicted).sum())
    tn = int((~labels & ~predicted).sum())
    return tp, fp, fn, tn


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with one class only."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1 - eps)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, recall (sensitivity), specificity, F1 at `threshold`, and ROC-AUC."""
    tp, fp, fn, tn = _confusion(labels, np.asarray(scores) >= threshold)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * recall, precision + recall),
        "auc": roc_auc(labels, scores),
    }


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPR, TPR and thresholds (score >= threshold is positive), from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]
    tp = np.cumsum(sorted_labels)[last]
    fp = np.cumsum(~sorted_labels)[last]
    positives, negatives = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    return (
        np.r_[0.0, fp / negatives],
        np.r_[0.0, tp / positives],
        np.r_[np.inf, sorted_scores[last]],
    )


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (predict positive when score >= it) that maximises Youden's J =
    sensitivity + specificity - 1; 0.5 when there is only one class."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return 0.5
    fpr, tpr, thresholds = roc_points(labels, scores)
    return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])
