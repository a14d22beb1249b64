"""The evaluation and prediction CLIs on real images, with the clinical metrics as the oracle."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as sk

from orchestrator.errors import UserError
from orchestrator.evaluation import evaluate, predict
from tests.helpers import ROOT, SAMPLE, checkpoint_meta
from trainables.backbones import create_backbone, input_config
from trainables.checkpoint import CheckpointMeta, save_checkpoint
from trainables.inference import FlipRotateAverage
from trainables.metrics import choose_threshold


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("checkpoint")
    model = create_backbone("test_efficientnet", "none", num_classes=2)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)  # spread the scores out
    cfg = input_config("test_efficientnet")
    meta = CheckpointMeta(
        backbone="test_efficientnet",
        model="test_efficientnet",
        classes=["benign", "malignant"],
        image_size=64,
        mean=list(cfg.mean),
        std=list(cfg.std),
        threshold=0.45,
        metrics={},
    )
    save_checkpoint(folder, model, meta)
    return folder


def test_report_numbers_match_the_predictions(checkpoint, small_prepared, tmp_path):
    out = tmp_path / "report"
    argv = [str(checkpoint), f"{small_prepared}@0", f"{small_prepared}@1", "--threshold-from"]
    argv += [f"{small_prepared}@2", "--bootstrap", "50", "--out", str(out)]
    assert evaluate.main(argv) == 0
    summary = json.loads((out / "metrics.json").read_text())
    first = pd.read_csv(out / "predictions-1.csv")
    assert len(first) == 10 and set(first["label"]) == {0, 1}
    values = summary["metrics"][f"{small_prepared}@0"]
    auc = values["threshold_free"]["roc_auc"]
    assert auc["value"] == pytest.approx(sk.roc_auc_score(first["label"], first["p_malignant"]))
    assert auc["low"] <= auc["value"] <= auc["high"]
    # the threshold is chosen on fold 2 and applied unchanged to folds 0 and 1
    assert summary["threshold_origin"].startswith(f"chosen on {small_prepared}@2")
    at = values["at_threshold"]["sensitivity"]["value"]
    predicted = first["p_malignant"] >= summary["threshold"]
    assert at == pytest.approx(sk.recall_score(first["label"], predicted))


def test_threshold_is_the_validation_folds_youden_point(checkpoint, small_prepared, tmp_path):
    evaluate.main(
        [
            str(checkpoint),
            f"{small_prepared}@0",
            "--threshold-from",
            f"{small_prepared}@2",
            "--bootstrap",
            "10",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    evaluate.main([str(checkpoint), f"{small_prepared}@2", "--bootstrap", "10", "--out", str(tmp_path / "b")])
    validation = pd.read_csv(tmp_path / "b" / "predictions-1.csv")
    chosen = json.loads((tmp_path / "a" / "metrics.json").read_text())["threshold"]
    assert chosen == pytest.approx(choose_threshold(validation["label"], validation["p_malignant"], "youden"))
    stored = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert stored["threshold"] == 0.45 and "stored in the checkpoint" in stored["threshold_origin"]


def test_html_report_is_self_contained(checkpoint, small_prepared, tmp_path):
    evaluate.main([str(checkpoint), str(small_prepared), "--bootstrap", "10", "--out", str(tmp_path)])
    page = (tmp_path / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "ROC-AUC" in page and "partial AUC above 80% sensitivity" in page
    for name in ("roc.png", "pr.png", "reliability.png", "confusion-1.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ROC-AUC |" in (tmp_path / "report.md").read_text()


def test_tta_averages_probabilities_over_flips_and_rotations():
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", "none", num_classes=2).eval()
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    images = torch.randn(2, 3, 32, 32)
    views = [images, images.flip(3), images.flip(2), images.rot90(1, (2, 3)), images.rot90(3, (2, 3))]
    with torch.no_grad():
        expected = torch.stack([torch.softmax(model(v), 1) for v in views]).mean(0)
        got = torch.softmax(FlipRotateAverage(model)(images), 1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_bad_data_arguments(checkpoint, small_prepared, tmp_path):
    with pytest.raises(UserError, match="data not found"):
        evaluate.main([str(checkpoint), str(tmp_path / "missing")])
    with pytest.raises(UserError, match="has folds 0 to 3"):
        evaluate.main([str(checkpoint), f"{small_prepared}@7"])


def test_predict_lists_unreadable_files_and_agrees_with_evaluate(checkpoint, small_prepared, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(p.name for p in (SAMPLE / "malignant").glob("*.jpg"))[:3]
    for name in names:
        (images / name).write_bytes((SAMPLE / "malignant" / name).read_bytes())
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "predictions.csv"
    assert predict.main([str(checkpoint), str(images), "--out", str(out)]) == 0
    rows = pd.read_csv(out)
    assert len(rows) == 4
    broken = rows[rows["path"].str.endswith("broken.jpg")].iloc[0]
    assert "not an image file" in broken["error"]
    scored = rows.dropna(subset=["p_malignant"])
    assert ((scored["p_malignant"] >= 0.45) == (scored["decision"] == "malignant")).all()
    # the same image scores the same through a prepared dataset (same resize, same transform)
    evaluate.main([str(checkpoint), str(small_prepared), "--bootstrap", "5", "--out", str(tmp_path / "e")])
    through_dataset = pd.read_csv(tmp_path / "e" / "predictions-1.csv").set_index("image_id")["p_malignant"]
    for _, row in scored.iterrows():
        image_id = next(
            i for i in through_dataset.index if i.endswith(row["path"].split("/")[-1].removesuffix(".jpg"))
        )
        assert row["p_malignant"] == pytest.approx(through_dataset[image_id], abs=1e-5)
    assert np.isfinite(scored["p_malignant"]).all()


def test_evaluation_keeps_a_lesions_shape_and_centre():
    """A round lesion on a 4:3 image stays round: shorter side resized, centre cropped, not squashed."""
    import cv2

    from trainables.transforms import eval_transform

    image = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(image, (200, 150), 90, (255, 255, 255), -1)
    out = eval_transform(64)(image=image)["image"]
    assert out.shape == (64, 64, 3)
    rows, cols = np.nonzero(out[..., 0] > 127)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - width) <= 1 and height == pytest.approx(90 * 2 * 64 / 300, abs=1.5)
    assert rows.mean() == pytest.approx(31.5, abs=1) and cols.mean() == pytest.approx(31.5, abs=1)


def test_a_checkpoint_is_scored_with_the_resize_it_was_validated_with():
    """Checkpoints from before the centre crop record no resize: they keep the square resize."""
    import cv2

    from orchestrator.evaluation.evaluate import preprocess_for

    image = np.zeros((300, 400, 3), np.uint8)
    cv2.circle(image, (200, 150), 90, (255, 255, 255), -1)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    widths = {}
    for resize in ("squash", "crop"):
        meta = checkpoint_meta(image_size=64, resize=resize)
        out = preprocess_for(meta)({"image": np.array([jpeg], dtype=object), "label": np.zeros(1)})
        widths[resize] = np.ptp(np.nonzero(out["image"][0, 0] > 127)[1]) + 1
    assert widths["squash"] == pytest.approx(90 * 2 * 64 / 400, abs=1.5)  # squeezed sideways
    assert widths["crop"] == pytest.approx(90 * 2 * 64 / 300, abs=1.5)
    older = json.loads(checkpoint_meta().to_json())
    del older["resize"]
    assert CheckpointMeta.from_json(json.dumps(older), "older").resize == "squash"


def test_scoring_a_checkpoint_does_not_import_the_training_loop():
    code = (
        "import sys, orchestrator.evaluation.evaluate, orchestrator.evaluation.predict; "
        "print(sorted(m for m in sys.modules if m.startswith(('trainables.train_loop', 'ray.train'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_a_threshold_cannot_be_chosen_on_one_class(checkpoint, tmp_path):
    images = tmp_path / "benign-only" / "images"
    images.mkdir(parents=True)
    rows = []
    for n, path in enumerate(sorted((SAMPLE / "benign").iterdir())[:6]):
        shutil.copy(path, images / f"ISIC_{n:07d}.jpg")
        rows.append(f"ISIC_{n:07d},benign\n")
    (images.parent / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").write_text("".join(rows))
    argv = [str(checkpoint), str(images.parent), "--threshold-from", str(images.parent)]
    with pytest.raises(UserError, match="cannot choose a threshold on .*6 benign images and no other class"):
        evaluate.main(
            [*argv, "--bootstrap", "10", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
        )
