import numpy as np
import pytest
from sklearn import metrics as sk

from trainables.metrics import (
    BINARY_METRICS,
    RANKING_METRICS,
    REPORTED_METRICS,
    THRESHOLD_METHODS,
    THRESHOLD_METRICS,
    UNTUNED_THRESHOLD,
    NoThreshold,
    at_threshold,
    auc_interval,
    binary_metrics,
    choose_threshold,
    confusion_counts,
    log_loss,
    roc_auc,
    validation_metrics,
)


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + labels * 0.3, 2)  # rounded: many ties
    ours = binary_metrics(labels, scores, threshold=0.5)
    predicted = scores >= 0.5
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert ours["precision"] == pytest.approx(sk.precision_score(labels, predicted, zero_division=0))
    assert ours["recall"] == pytest.approx(sk.recall_score(labels, predicted))
    assert ours["specificity"] == pytest.approx(sk.recall_score(1 - labels, ~predicted))
    assert ours["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert ours["auc"] == pytest.approx(sk.roc_auc_score(labels, scores))
    assert log_loss(labels, scores) == pytest.approx(sk.log_loss(labels, scores), rel=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 1.1])
def test_confusion_counts_are_scikit_learns_matrix(threshold):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)
    scores = np.round(rng.random(100), 1)
    tn, fp, fn, tp = sk.confusion_matrix(labels, scores >= threshold, labels=[0, 1]).ravel()
    assert confusion_counts(labels, scores, threshold) == (tp, fp, fn, tn)


def test_auc_is_nan_with_a_single_class():
    assert np.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_no_positive_predictions_give_zero_precision_not_an_error():
    result = binary_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]))
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["auc"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_matches_scikit_learn_roc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.6 + labels * 0.3, 2)
    fpr, tpr, thresholds = sk.roc_curve(labels, scores)
    assert choose_threshold(labels, scores, "youden") == pytest.approx(thresholds[np.argmax(tpr - fpr)])


@pytest.mark.parametrize("labels", [np.zeros(5, int), np.ones(5, int)], ids=["benign only", "malignant only"])
def test_one_class_has_no_threshold_whatever_the_method(labels):
    scores = np.linspace(0.1, 0.9, 5)
    for method in THRESHOLD_METHODS:
        with pytest.raises(NoThreshold, match="5 (benign|malignant) images and no other class"):
            choose_threshold(labels, scores, method)
    assert validation_metrics(labels, scores)["val_threshold"] == UNTUNED_THRESHOLD == 0.5
    with pytest.raises(ValueError, match="unknown threshold method"):
        choose_threshold(labels, scores, "median")


def test_a_validation_fold_with_one_class_is_reported_not_an_error():
    metrics = validation_metrics(np.zeros(4, int), np.array([0.1, 0.6, 0.3, 0.9]))
    assert set(metrics) | {"train_loss"} == set(REPORTED_METRICS)
    assert metrics["val_threshold"] == 0.5 and np.isnan(metrics["val_auc"])
    assert metrics["val_specificity"] == 0.5 and metrics["val_recall_at_threshold"] == 0.0


def test_zero_denominators_are_zero_everywhere():
    """The module's one rule: a ratio of counts over nothing is 0.0, at 0.5 and at any threshold."""
    labels, scores = np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3])
    point = at_threshold(labels, scores, 0.5)
    assert point["precision"] == point["sensitivity"] == point["f1"] == 0.0
    assert point["balanced_accuracy"] == pytest.approx(0.5)
    benign = at_threshold(np.zeros(3, int), scores, 0.25)  # no malignant case
    assert benign["sensitivity"] == 0.0 and benign["specificity"] == pytest.approx(2 / 3)
    assert at_threshold(np.zeros(0, int), np.zeros(0), 0.5)["accuracy"] == 0.0
    loop = binary_metrics(labels, scores)  # the train loop's names for the same numbers
    assert loop["recall"] == point["sensitivity"]
    assert all(loop[name] == point[name] for name in ("accuracy", "precision", "specificity", "f1"))


def test_the_names_are_what_the_functions_return():
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.6, 0.4])
    assert tuple(binary_metrics(labels, scores)) == BINARY_METRICS
    assert tuple(at_threshold(labels, scores, 0.5)) == THRESHOLD_METRICS
    assert set(validation_metrics(labels, scores)) | {"train_loss"} == set(REPORTED_METRICS)
    assert len(set(REPORTED_METRICS)) == len(REPORTED_METRICS)
    assert set(RANKING_METRICS) <= set(REPORTED_METRICS)


def delong_by_pairs(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """DeLong's AUC and standard error from every (malignant, benign) pair, as the 1988 paper writes it."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    above, below = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.sqrt(above.var(ddof=1) / len(positive) + below.var(ddof=1) / len(negative))


@pytest.mark.parametrize("seed", range(4))
def test_the_auc_interval_is_delongs_around_scikit_learns_auc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) * 0.6 + labels * 0.3 * seed / 3, 2)  # ties; AUC 0.5 to ~0.95
    auc, error = delong_by_pairs(labels, scores)
    assert auc == pytest.approx(sk.roc_auc_score(labels, scores))
    low, high = auc_interval(labels, scores)
    assert (low, high) == pytest.approx((max(0, auc - 1.96 * error), min(1, auc + 1.96 * error)), abs=1e-4)
    assert low < auc < high
    wider = auc_interval(labels[:30], scores[:30])  # half the images: a wider interval
    assert wider[1] - wider[0] > high - low


def test_the_auc_interval_is_clipped_and_undefined_without_two_of_each_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert auc_interval(labels, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])) == (1.0, 1.0)  # no spread
    assert np.isnan(auc_interval(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]))).all()
    metrics = validation_metrics(labels, np.array([0.1, 0.6, 0.3, 0.5, 0.8, 0.9]))
    assert metrics["val_auc_low"] < metrics["val_auc"] < metrics["val_auc_high"]
