"""Clinical metrics against scikit-learn (or a hand-computed case) as the oracle."""

import numpy as np
import pytest
from sklearn import metrics as sk

from orchestrator.evaluation.clinical import threshold_free
from trainables.metrics import (
    THRESHOLD_FREE_METRICS,
    at_threshold,
    bootstrap,
    brier,
    calibration_bins,
    choose_threshold,
    expected_calibration_error,
    partial_auc,
    pr_auc,
    pr_points,
    roc_points,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)


def sample(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # rounded: ties
    return labels, scores


@pytest.mark.parametrize("seed", range(4))
def test_threshold_metrics_match_scikit_learn(seed):
    labels, scores = sample(seed)
    predicted = scores >= 0.4
    ours = at_threshold(labels, scores, 0.4)
    assert ours["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert ours["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, predicted))
    assert ours["precision"] == pytest.approx(sk.precision_score(labels, predicted))
    assert ours["sensitivity"] == pytest.approx(sk.recall_score(labels, predicted))
    assert ours["specificity"] == pytest.approx(sk.recall_score(1 - labels, ~predicted))
    assert ours["f1"] == pytest.approx(sk.f1_score(labels, predicted))


@pytest.mark.parametrize("seed", range(4))
def test_curve_metrics_match_scikit_learn(seed):
    labels, scores = sample(seed)
    fpr, tpr, _ = roc_points(labels, scores)
    sk_fpr, sk_tpr, _ = sk.roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    assert pr_auc(labels, scores) == pytest.approx(sk.average_precision_score(labels, scores))
    assert brier(labels, scores) == pytest.approx(sk.brier_score_loss(labels, scores))
    # sensitivity at 80% specificity: the best TPR among ROC points with FPR <= 0.2
    assert sensitivity_at_specificity(labels, scores, 0.8) == pytest.approx(sk_tpr[sk_fpr <= 0.2].max())
    assert specificity_at_sensitivity(labels, scores, 0.9) == pytest.approx((1 - sk_fpr[sk_tpr >= 0.9]).max())


def test_pr_points_are_scikit_learns_curve_from_the_highest_threshold_down():
    labels, scores = sample(0)
    precision, recall, _ = sk.precision_recall_curve(labels, scores, drop_intermediate=False)
    ours_recall, ours_precision = pr_points(labels, scores)
    assert np.allclose(ours_recall, recall[-2::-1]) and np.allclose(ours_precision, precision[-2::-1])
    fpr, tpr, _ = roc_points(labels, scores)
    assert np.allclose(ours_recall, tpr[1:])  # one point per ROC point but (0, 0)


def test_one_class_curves_and_areas():
    benign, scores = np.zeros(6, int), np.linspace(0.1, 0.9, 6)
    fpr, tpr, _ = roc_points(benign, scores)
    assert (tpr == 0).all() and fpr[-1] == 1  # the rate of the absent class is 0
    assert np.isnan(pr_auc(benign, scores)) and np.isnan(partial_auc(benign, scores))
    assert (pr_points(benign, scores)[0] == 0).all()
    assert np.isnan(specificity_at_sensitivity(benign, scores, 0.9))  # no threshold reaches it
    assert sensitivity_at_specificity(benign, scores, 0.8) == 0.0
    values = threshold_free(benign, scores)
    assert np.isnan(values["roc_auc"]) and values["brier"] == pytest.approx(np.mean(scores**2))


def test_threshold_free_names():
    labels, scores = sample(0)
    assert tuple(threshold_free(labels, scores)) == THRESHOLD_FREE_METRICS


@pytest.mark.parametrize("seed", range(4))
def test_partial_auc_is_the_isic_2024_metric(seed):
    labels, scores = sample(seed)
    # the ISIC 2024 challenge's formula: flip the problem, McClish-scaled partial AUC, unscale
    max_fpr = 0.2
    scaled = sk.roc_auc_score(1 - labels, 1 - scores, max_fpr=max_fpr)
    expected = 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / 0.5 * (scaled - 0.5)
    assert partial_auc(labels, scores, 0.8) == pytest.approx(expected, abs=1e-9)


def test_partial_auc_bounds():
    labels = np.array([0, 0, 1, 1])
    assert partial_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(0.2)  # perfect
    assert partial_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == pytest.approx(0.0)


def test_calibration_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.05, 0.15, 0.15, 0.95, 0.85])
    count, predicted, observed = calibration_bins(labels, scores, bins=2)
    assert count.tolist() == [3, 2]
    assert predicted == pytest.approx([0.35 / 3, 0.9]) and observed == pytest.approx([1 / 3, 1.0])
    # ECE = 3/5 * |0.1167 - 0.3333| + 2/5 * |0.9 - 1.0|
    assert expected_calibration_error(labels, scores, bins=2) == pytest.approx(
        0.6 * (1 / 3 - 0.35 / 3) + 0.4 * 0.1
    )


def test_calibration_matches_scikit_learn_curve():
    from sklearn.calibration import calibration_curve

    labels, scores = sample(1)
    count, predicted, observed = calibration_bins(labels, scores, bins=10)
    true, pred = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    assert np.allclose(observed[count > 0], true) and np.allclose(predicted[count > 0], pred)


def test_thresholds_from_validation_data():
    labels, scores = sample(2)
    fpr, tpr, thresholds = sk.roc_curve(labels, scores)
    assert choose_threshold(labels, scores, "youden") == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    chosen = choose_threshold(labels, scores, "sensitivity", 0.9)
    assert at_threshold(labels, scores, chosen)["sensitivity"] >= 0.9
    higher = scores[scores > chosen].min()  # the next threshold up misses the target
    assert at_threshold(labels, scores, higher)["sensitivity"] < 0.9


def test_bootstrap_intervals_are_seeded_and_cover_the_estimate():
    labels, scores = sample(3, n=400)
    intervals = bootstrap(labels, scores, threshold_free, resamples=200, seed=1)
    again = bootstrap(labels, scores, threshold_free, resamples=200, seed=1)
    assert intervals == again
    point = threshold_free(labels, scores)
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high, name
    low, high = intervals["roc_auc"]
    assert 0.02 < high - low < 0.2  # about +-2 standard errors of an AUC on 400 cases
