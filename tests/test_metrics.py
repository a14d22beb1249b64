import numpy as np
import pytest
from sklearn import metrics as sk

from trainables.metrics import binary_metrics, log_loss, roc_auc


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


def test_auc_is_nan_with_a_single_class():
    assert np.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_no_positive_predictions_give_zero_precision_not_an_error():
    result = binary_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]))
    assert result["precision"] == 0.0 and result["recall"] == 0.0 and result["f1"] == 0.0
    assert result["auc"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_matches_scikit_learn_roc(seed):
    from trainables.metrics import youden_threshold

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.6 + labels * 0.3, 2)
    fpr, tpr, thresholds = sk.roc_curve(labels, scores)
    assert youden_threshold(labels, scores) == pytest.approx(thresholds[np.argmax(tpr - fpr)])
