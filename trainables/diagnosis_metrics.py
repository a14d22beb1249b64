"""Metrics of a diagnosis task (k classes, one probability each), as the ISIC challenges score
them: balanced multi-class accuracy (ISIC 2018 and 2019's ranking metric), one-vs-rest ROC-AUC per
class and their mean, the ISIC 2017 Part 3 score (the mean of the melanoma and seborrheic-keratosis
AUCs) and the k x k confusion matrix. Pure functions over arrays in numpy, each checked against
scikit-learn by the tests, like `metrics.py` (whose ROC-AUC they use).

`labels` are class indices 0..k-1; `probabilities` has a row per image and a column per class; the
predicted class is the most probable one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from trainables.metrics import bootstrap, roc_auc

# the ISIC 2017 Part 3 score: the mean ROC-AUC of these classes
ISIC2017_CLASSES = ("melanoma", "seborrheic_keratosis")
# resamples of the intervals an epoch reports (the evaluation takes its own number)
EPOCH_RESAMPLES = 200
# what a diagnosis task reports besides the binary metrics, by which a sweep may rank trials too
# (and by `val_auc_<class>`)
DIAGNOSIS_RANKING_METRICS = ("val_balanced_accuracy", "val_mean_auc", "val_isic2017_score")


def class_key(name: str) -> str:
    """A class name as it reads in a metric's name: `auc_seborrheic_keratosis`, `auc_mel`."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def confusion_matrix(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Images per (true class, predicted class): a row per true class, as scikit-learn's."""
    k = np.asarray(probabilities).shape[1]
    cell = np.asarray(labels) * k + np.argmax(probabilities, axis=1)
    return np.bincount(cell, minlength=k * k).reshape(k, k)


def balanced_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean over the classes present in `labels` of the share of their images predicted as
    that class (the recall per class): scikit-learn's balanced_accuracy_score."""
    counts = confusion_matrix(labels, probabilities)
    present = counts.sum(axis=1) > 0
    return float((np.diag(counts)[present] / counts.sum(axis=1)[present]).mean())


def class_aucs(labels: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """One-vs-rest ROC-AUC of each class's probability (NaN for a class absent from `labels`, or
    the only one present)."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    return [roc_auc(labels == c, probabilities[:, c]) for c in range(probabilities.shape[1])]


def diagnosis_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """`balanced_accuracy`, `auc_<class>` per class (`class_key`), `mean_auc` (their mean over the
    classes that have one: scikit-learn's macro one-vs-rest AUC when every class is present) and,
    when the classes include both, `isic2017_score`."""
    aucs = dict(zip(map(class_key, classes), class_aucs(labels, probabilities), strict=True))
    defined = [auc for auc in aucs.values() if not np.isnan(auc)]
    metrics = {
        "balanced_accuracy": balanced_accuracy(labels, probabilities),
        **{f"auc_{name}": auc for name, auc in aucs.items()},
        "mean_auc": float(np.mean(defined)) if defined else float("nan"),
    }
    if all(name in aucs for name in ISIC2017_CLASSES):
        metrics["isic2017_score"] = float(np.mean([aucs[name] for name in ISIC2017_CLASSES]))
    return metrics


def diagnosis_metric_names(classes: Sequence[str]) -> list[str]:
    """The keys of `diagnosis_metrics` for these classes, in its order."""
    keys = [class_key(name) for name in classes]
    names = ["balanced_accuracy", *[f"auc_{key}" for key in keys], "mean_auc"]
    return names + (["isic2017_score"] if all(key in keys for key in ISIC2017_CLASSES) else [])


def diagnosis_ranking_metrics(classes: Sequence[str]) -> list[str]:
    """The metrics of a diagnosis task with these classes by which a sweep may rank its trials."""
    return [f"val_{name}" for name in diagnosis_metric_names(classes)]


def reported_diagnosis_metrics(classes: Sequence[str]) -> list[str]:
    """What an epoch of a diagnosis task reports besides the binary metrics (`validation_metrics`):
    each of `diagnosis_metrics` as `val_<name>`, with `_low` and `_high`."""
    return [f"val_{name}{end}" for name in diagnosis_metric_names(classes) for end in ("", "_low", "_high")]


def validation_report(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, float | str]:
    """An epoch's diagnosis metrics, as `reported_diagnosis_metrics` names them, and its confusion
    matrix as `val_confusion` (`confusion_text`)."""
    metrics: dict[str, float | str] = {
        f"val_{name}": value for name, value in with_intervals(labels, probabilities, classes).items()
    }
    metrics["val_confusion"] = confusion_text(confusion_matrix(labels, probabilities))
    return metrics


def confusion_text(matrix: np.ndarray) -> str:
    """A confusion matrix as one leaderboard cell: its rows (true classes, in the model's class
    order) separated by `; `, each row's counts by spaces: `12 3 1; 2 20 4; 0 5 7`."""
    return "; ".join(" ".join(str(int(count)) for count in row) for row in np.asarray(matrix))


def with_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    resamples: int = EPOCH_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """`diagnosis_metrics` with the 95% interval of each (`<name>_low`, `<name>_high`), from a
    bootstrap that keeps every class's count."""
    metrics = diagnosis_metrics(labels, probabilities, classes)
    intervals = bootstrap(
        labels, probabilities, lambda y, p: diagnosis_metrics(y, p, classes), resamples, seed
    )
    out: dict[str, float] = {}
    for name, value in metrics.items():
        out[name] = value
        out[f"{name}_low"], out[f"{name}_high"] = intervals[name]
    return out
