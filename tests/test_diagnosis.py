"""The diagnosis task: the source's own classes prepared beside the binary label, k-class metrics
against scikit-learn, and a three-class sweep end to end on real ISIC 2017 images (skipped
without ../shared/data)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from orchestrator.config import parse_spec
from orchestrator.data.dataset_format import read_manifest, task_labels
from orchestrator.data.pipeline import build_datasets, train_class_counts
from orchestrator.data.prepare import prepare
from orchestrator.errors import UserError
from tests.helpers import ISIC2017, isic2017_rows, needs_shared, spec_dict, write_isic2017
from trainables.diagnosis_metrics import (
    balanced_accuracy,
    class_aucs,
    class_key,
    confusion_matrix,
    diagnosis_metrics,
    with_intervals,
)
from trainables.inference import as_binary, malignant_indices

CLASSES = ["melanoma", "nevus", "seborrheic_keratosis"]
needs_isic2017 = needs_shared(ISIC2017)


def diagnosis_of(row: dict[str, str]) -> str:
    if row["melanoma"] == "1.0":
        return "melanoma"
    return "seborrheic_keratosis" if row["seborrheic_keratosis"] == "1.0" else "nevus"


def three_classes(destination: Path, per_class: int, skip: int = 0) -> Path:
    """`per_class` images of each ISIC 2017 diagnosis (after the first `skip`), in the ISIC 2017
    layout."""
    rows = isic2017_rows()
    chosen = [
        row
        for name in CLASSES
        for row in [r for r in rows if diagnosis_of(r) == name][skip : skip + per_class]
    ]
    return write_isic2017(destination, chosen)


def scored(n: int = 120, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities that carry some signal (ties: the binary ROC-AUC's tests)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    probabilities = rng.dirichlet(np.ones(k), n)
    probabilities[np.arange(n), labels] += 0.4
    return labels, probabilities / probabilities.sum(1, keepdims=True)


def test_the_metrics_match_scikit_learn():
    labels, probabilities = scored()
    predicted = probabilities.argmax(1)
    assert (confusion_matrix(labels, probabilities) == sk.confusion_matrix(labels, predicted)).all()
    assert balanced_accuracy(labels, probabilities) == pytest.approx(
        sk.balanced_accuracy_score(labels, predicted)
    )
    ours = class_aucs(labels, probabilities)
    assert ours == pytest.approx([sk.roc_auc_score(labels == c, probabilities[:, c]) for c in range(3)])
    metrics = diagnosis_metrics(labels, probabilities, CLASSES)
    assert metrics["mean_auc"] == pytest.approx(sk.roc_auc_score(labels, probabilities, multi_class="ovr"))
    assert metrics["isic2017_score"] == pytest.approx((ours[0] + ours[2]) / 2)  # melanoma, keratosis
    assert "isic2017_score" not in diagnosis_metrics(labels, probabilities, ["a", "b", "c"])


def test_a_class_missing_from_the_labels_is_left_out_as_scikit_learn_leaves_it():
    labels, probabilities = scored()
    labels = np.where(labels == 1, 0, labels)  # no image of class 1
    predicted = probabilities.argmax(1)
    with pytest.warns(UserWarning):  # scikit-learn warns of a predicted class with no image
        expected = sk.balanced_accuracy_score(labels, predicted)
    assert balanced_accuracy(labels, probabilities) == pytest.approx(expected)
    metrics = diagnosis_metrics(labels, probabilities, CLASSES)
    assert np.isnan(metrics["auc_nevus"])
    assert metrics["mean_auc"] == pytest.approx(
        (metrics["auc_melanoma"] + metrics["auc_seborrheic_keratosis"]) / 2
    )


def test_every_metric_has_an_interval_around_it_that_narrows_with_more_images():
    small = with_intervals(*scored(60), CLASSES, resamples=200)
    large = with_intervals(*scored(2000), CLASSES, resamples=200)
    for name in ("balanced_accuracy", "auc_melanoma", "auc_nevus", "mean_auc", "isic2017_score"):
        assert small[f"{name}_low"] <= small[name] <= small[f"{name}_high"], name
        assert large[f"{name}_high"] - large[f"{name}_low"] < small[f"{name}_high"] - small[f"{name}_low"], (
            name
        )


def test_the_malignant_probability_adds_up_the_malignant_classes():
    labels, probabilities = scored()
    positive = malignant_indices(CLASSES, ["melanoma", "seborrheic_keratosis"])
    binary, scores = as_binary(labels, probabilities, positive)
    assert (binary == np.isin(labels, [0, 2])).all()
    assert scores == pytest.approx(probabilities[:, 0] + probabilities[:, 2])
    # two classes, benign and malignant: the labels and the second column, as before
    two = probabilities[:, :2] / probabilities[:, :2].sum(1, keepdims=True)
    same, second = as_binary(labels % 2, two, malignant_indices(["benign", "malignant"], ["malignant"]))
    assert (same == labels % 2).all() and (second == two[:, 1]).all()


def test_class_names_become_metric_names():
    assert class_key("Seborrheic keratosis") == "seborrheic_keratosis"
    assert class_key("MEL") == "mel"
    assert class_key("basal cell carcinoma (BCC)") == "basal_cell_carcinoma_bcc"


def test_a_metric_of_the_diagnosis_task_needs_that_task():
    for metric in ("val_balanced_accuracy", "val_isic2017_score", "val_auc_nevus"):
        assert parse_spec(spec_dict(data={"task": "diagnosis"}, scheduler={"metric": metric}))
        with pytest.raises(UserError, match="not reported for data.task: binary"):
            parse_spec(spec_dict(scheduler={"metric": metric}))
    with pytest.raises(UserError, match="val_balanced_accuracy"):
        parse_spec(spec_dict(data={"task": "diagnosis"}, scheduler={"metric": "val_kappa"}))


def test_a_dataset_without_diagnoses_says_what_the_diagnosis_task_needs(small_prepared):
    manifest = read_manifest(small_prepared)
    assert manifest.diagnoses is None
    assert task_labels(manifest, "binary", small_prepared).classes == ["benign", "malignant"]
    with pytest.raises(UserError, match="folder-per-class.*data.task: binary"):
        task_labels(manifest, "diagnosis", small_prepared)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diagnosis")
    out = root / "prepared"
    prepare(three_classes(root / "source", per_class=12), out, image_size=48, folds=3, workers=1)
    return out


@needs_isic2017
def test_prepare_keeps_the_diagnoses_and_stratifies_the_folds_by_them(prepared):
    manifest = read_manifest(prepared)
    assert manifest.classes == ["benign", "malignant"]  # the binary task is as it was
    found = manifest.diagnoses
    assert found.classes == CLASSES and found.malignant == ["melanoma"] and found.mixed == []
    assert found.counts.per_class == dict.fromkeys(CLASSES, 12)
    assert all(per_class == dict.fromkeys(CLASSES, 4) for per_class in found.counts.per_fold.values())
    assert manifest.counts.per_class == {"benign": 24, "malignant": 12}


@needs_isic2017
def test_the_pipeline_labels_each_image_with_its_diagnosis_and_balances_them(ray_local, prepared):
    manifest = read_manifest(prepared)
    assert train_class_counts(manifest, 0, task="diagnosis") == {0: 8, 1: 8, 2: 8}
    datasets = build_datasets(prepared, 0, 32, "none", "oversample", task="diagnosis")
    val = datasets["val"].take_all()
    assert sorted(int(row["label"]) for row in val) == [0] * 4 + [1] * 4 + [2] * 4
    # the labels are the diagnoses of the images, as the ground truth gives them
    truth = {row["image_id"]: CLASSES.index(diagnosis_of(row)) for row in isic2017_rows()}
    trained = pd.read_parquet(prepared / "shards", columns=["image_id", "fold"]).query("fold != 0")
    assert sorted(int(row["label"]) for row in datasets["train"].take_all()) == sorted(
        truth[image_id] for image_id in trained["image_id"]
    )


@needs_isic2017
@pytest.mark.slow
def test_a_three_class_sweep_reports_the_challenge_metrics_end_to_end(ray_local, prepared, tmp_path):
    """Train a pretrained EfficientNet-Lite0 on three diagnoses, on two folds, ranked by the ISIC
    2017 score; the checkpoints predict three classes, scoring one again gives the sweep's binary
    numbers, and the two fold models make an ensemble tested on other images."""
    from orchestrator.driver import run_sweep
    from orchestrator.evaluation.evaluate import evaluate_fold
    from trainables.checkpoint import load_checkpoint

    spec = parse_spec(
        {
            "name": "dx",
            "data": {
                "prepared": str(prepared),
                "folds": 3,
                "val_fold": [0, 1],
                "image_size": 48,
                "task": "diagnosis",
                "cache": str(tmp_path / "cache"),
            },
            "search": {"backbone": "efficientnet_lite0", "batch_size": 12, "lr": 1e-3},
            "train": {"epochs": 2, "weights": "package"},
            "scheduler": {"type": "fifo", "metric": "val_isic2017_score"},
            "evaluation": {
                "test": [str(three_classes(tmp_path / "test", per_class=4, skip=12))],
                "ensemble": "folds",
                "bootstrap": 50,
            },
            "storage": str(tmp_path / "runs"),
        }
    )
    run_dir, frame = run_sweep(spec)
    best = frame.iloc[0]
    assert best["status"] == "completed"
    for name in (
        "balanced_accuracy",
        "auc_melanoma",
        "auc_nevus",
        "auc_seborrheic_keratosis",
        "isic2017_score",
    ):
        value, low, high = (best[f"best_val_{name}{end}"] for end in ("", "_low", "_high"))
        assert 0 <= low <= value <= high <= 1, name
    assert best["best_val_isic2017_score"] == pytest.approx(
        (best["best_val_auc_melanoma"] + best["best_val_auc_seborrheic_keratosis"]) / 2
    )
    model, meta = load_checkpoint(Path(best["checkpoint"]))
    assert (meta.task, meta.classes, meta.malignant) == ("diagnosis", CLASSES, ["melanoma"])
    assert model.num_classes == 3
    # the binary metrics are P(melanoma) against the benign/malignant labels of the same images
    again = evaluate_fold(Path(best["checkpoint"]), prepared, fold=int(best["val_fold"]))
    assert again["val_auc"] == pytest.approx(best["best_val_auc"], abs=1e-6)
    # TensorBoard: the curves of the diagnosis metrics under their own tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags, images = set(), set()
    for events in run_dir.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
        images |= set(accumulator.Tags()["images"])
    assert {"diagnosis/balanced_accuracy", "diagnosis/auc_melanoma", "diagnosis/isic2017_score"} <= tags
    assert "diagnosis/confusion_of_the_best_trial" in images
    # the leaderboard's confusion matrix: a row per true class, 4 validation images of each
    matrix = [[int(n) for n in row.split()] for row in best["best_val_confusion"].split("; ")]
    assert [sum(row) for row in matrix] == [4, 4, 4]
    # the ensemble of the two fold models: its probabilities are their mean, on the test images
    table = pd.read_csv(run_dir / "ensemble.csv")
    assert list(table["model"]) == ["ensemble", "member 1", "member 2"]
    assert sorted(table["val_fold"].dropna()) == [0, 1]
    assert table["test_diagnosis_isic2017_score"].to_numpy() == pytest.approx(
        (table["test_diagnosis_auc_melanoma"] + table["test_diagnosis_auc_seborrheic_keratosis"]).to_numpy()
        / 2
    )
    # the top trials' own test columns: the binary ones and the diagnosis ones apart
    assert {"test_balanced_accuracy", "test_diagnosis_balanced_accuracy"} <= set(frame.columns)
    for column in ("test_roc_auc", "test_diagnosis_balanced_accuracy", "test_diagnosis_auc_melanoma"):
        assert table[column].between(0, 1).all(), column
    report = run_dir / "report-ensemble"
    ensemble, *members = (pd.read_csv(report / f"predictions-{n}.csv") for n in (1, 2, 3))
    assert len(ensemble) == 12 and set(ensemble["diagnosis"]) == set(CLASSES)
    for name in ("p_malignant", "p_melanoma", "p_nevus"):
        assert ensemble[name].to_numpy() == pytest.approx(
            (members[0][name] + members[1][name]).to_numpy() / 2
        )
    assert "Confusion matrix of the diagnoses" in (report / "report.md").read_text()


@needs_isic2017
def test_a_sweep_refuses_classes_that_hold_both_labels_and_metrics_of_other_classes(prepared):
    from orchestrator.driver import check_task

    manifest = read_manifest(prepared)
    spec = parse_spec(spec_dict(data={"task": "diagnosis"}, scheduler={"metric": "val_auc_nevus"}))
    check_task(spec, manifest, prepared)  # the dataset's own classes
    unknown = spec.model_copy(
        update={"scheduler": spec.scheduler.model_copy(update={"metric": "val_auc_mel"})}
    )
    with pytest.raises(UserError, match="'val_auc_mel' is not reported for the classes.*val_auc_nevus"):
        check_task(unknown, manifest, prepared)
    mixed = manifest.model_copy(
        update={"diagnoses": manifest.diagnoses.model_copy(update={"mixed": ["nevus"]})}
    )
    with pytest.raises(UserError, match="images of nevus carry both labels.*data.task: binary"):
        check_task(spec, mixed, prepared)
