"""Ensembles of checkpoints in `isic-evaluate` and `isic-predict`, and a diagnosis model scored on
data without its diagnoses: tiny random models on the bundled sample's real images."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.errors import UserError
from orchestrator.evaluation import evaluate, predict
from tests.helpers import SAMPLE
from trainables.backbones import create_backbone, input_config
from trainables.checkpoint import CheckpointMeta, save_checkpoint


def make_checkpoint(folder, seed: int, threshold: float, classes=("benign", "malignant"), **fields):
    torch.manual_seed(seed)
    model = create_backbone("test_efficientnet", "none", num_classes=len(classes))
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)  # spread the scores out
    cfg = input_config("test_efficientnet")
    meta = CheckpointMeta(
        backbone="test_efficientnet",
        classes=list(classes),
        image_size=64,
        mean=list(cfg.mean),
        std=list(cfg.std),
        threshold=threshold,
        metrics={},
        **fields,
    )
    save_checkpoint(folder, model, meta)
    return folder


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [make_checkpoint(root / f"m{seed}", seed, threshold) for seed, threshold in ((1, 0.4), (2, 0.6))]


@pytest.fixture(scope="module")
def diagnosis_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dx") / "model"
    classes = ("melanoma", "nevus", "seborrheic_keratosis")
    return make_checkpoint(folder, 3, 0.5, classes, task="diagnosis", malignant=["melanoma"])


def test_an_ensemble_is_the_mean_of_its_members_beside_each_of_them(members, small_prepared, tmp_path):
    out = tmp_path / "report"
    data = f"{small_prepared}@0"
    assert evaluate.main([*map(str, members), data, "--bootstrap", "20", "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert list(summary["datasets"]) == [f"{data} · ensemble", f"{data} · member 1", f"{data} · member 2"]
    assert summary["threshold"] == pytest.approx(0.5)  # the mean of the members' stored thresholds
    ensemble, first, second = (pd.read_csv(out / f"predictions-{n}.csv") for n in (1, 2, 3))
    assert not np.allclose(first["p_malignant"], second["p_malignant"])
    assert ensemble["p_malignant"].to_numpy() == pytest.approx(
        (first["p_malignant"] + second["p_malignant"]) / 2
    )
    # each member scores as it does alone
    alone = tmp_path / "alone"
    assert evaluate.main([str(members[0]), data, "--bootstrap", "20", "--out", str(alone)]) == 0
    assert pd.read_csv(alone / "predictions-1.csv")["p_malignant"].to_numpy() == pytest.approx(
        first["p_malignant"]
    )
    assert "member 2" in (out / "report.html").read_text()


def test_predict_averages_the_members_and_their_thresholds(members, tmp_path):
    images = [str(path) for path in sorted((SAMPLE / "malignant").glob("*.jpg"))[:3]]
    one, two, both = (tmp_path / f"{name}.csv" for name in ("one", "two", "both"))
    predict.main([str(members[0]), *images, "--out", str(one)])
    predict.main([str(members[1]), *images, "--out", str(two)])
    predict.main([*map(str, members), *images, "--out", str(both)])
    a, b, mean = (pd.read_csv(path) for path in (one, two, both))
    assert mean["p_malignant"].to_numpy() == pytest.approx(
        (a["p_malignant"] + b["p_malignant"]) / 2, abs=2e-6
    )
    assert (mean["threshold"] == 0.5).all()


def test_members_must_predict_the_same_classes(members, diagnosis_model, small_prepared, tmp_path):
    with pytest.raises(UserError, match="must predict the same classes"):
        evaluate.main([str(members[0]), str(diagnosis_model), f"{small_prepared}@0", "--out", str(tmp_path)])


def test_the_command_line_says_which_argument_is_neither(members, small_prepared):
    with pytest.raises(UserError, match="is not a checkpoint.*checkpoints first"):
        evaluate.split_arguments([f"{small_prepared}@0", str(members[0])])
    with pytest.raises(UserError, match="data not found: .*m9 \\(nor is it a checkpoint"):
        evaluate.split_arguments([str(members[0]), str(members[0].parent / "m9"), str(small_prepared)])
    with pytest.raises(UserError, match="nothing after the checkpoints"):
        evaluate.split_arguments([str(members[0])])
    assert evaluate.split_arguments([*map(str, members), f"{small_prepared}@0"]) == (
        [*map(str, members)],
        [f"{small_prepared}@0"],
    )


def test_a_diagnosis_model_on_data_without_diagnoses_keeps_its_binary_metrics(
    diagnosis_model, small_prepared, tmp_path, caplog
):
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING):
        assert (
            evaluate.main(
                [str(diagnosis_model), f"{small_prepared}@0", "--bootstrap", "20", "--out", str(out)]
            )
            == 0
        )
    summary = json.loads((out / "metrics.json").read_text())
    assert "diagnosis" not in summary and "no diagnosis metrics" in caplog.text
    rows = pd.read_csv(out / "predictions-1.csv")
    assert rows["p_malignant"].to_numpy() == pytest.approx(rows["p_melanoma"].to_numpy())
    assert np.allclose(rows[["p_melanoma", "p_nevus", "p_seborrheic_keratosis"]].sum(axis=1), 1, atol=1e-5)


def test_each_test_set_and_each_member_has_columns_of_its_own():
    from orchestrator.tuning.top_trials import TEST_COLUMNS, test_columns

    def entry(value):
        cell = {"value": value, "low": value - 0.1, "high": value + 0.1}
        return {group: {metric: cell for _, metric in TEST_COLUMNS} for group, _ in TEST_COLUMNS}

    names = ["a · ensemble", "a · member 1", "b · ensemble", "b · member 1"]
    summary = {
        "metrics": {name: entry(0.5 + i / 10) for i, name in enumerate(names)},
        "diagnosis": {"b · member 1": {"auc_melanoma": {"value": 0.9, "low": 0.8, "high": 1.0}}},
    }
    member = test_columns(summary, ["a", "b"], "member 1")
    assert (member["test_roc_auc"], member["test2_roc_auc"], member["test2_f1_high"]) == (0.6, 0.8, 0.9)
    assert (member["test2_diagnosis_auc_melanoma"], member["test2_diagnosis_auc_melanoma_low"]) == (0.9, 0.8)
    assert "test_diagnosis_auc_melanoma" not in member
    assert test_columns(summary, ["a", "b"], "ensemble")["test2_roc_auc_low"] == pytest.approx(0.6)
    one = {"metrics": {"a": entry(0.7)}}
    assert test_columns(one, ["a"]) == {
        f"test_{metric}{end}": value
        for _, metric in TEST_COLUMNS
        for end, value in (("", 0.7), ("_low", 0.7 - 0.1), ("_high", 0.7 + 0.1))
    }
