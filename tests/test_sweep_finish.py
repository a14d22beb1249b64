"""A finished sweep keeps its leaderboard whatever happens when its best trials are tested, and a
test set that cannot be read stops the sweep before any training."""

import logging

import pandas as pd
import pytest
import torch

from orchestrator.config import parse_spec
from orchestrator.data.dataset_format import read_manifest
from orchestrator.driver import finish, summarise
from orchestrator.errors import UserError
from orchestrator.preflight import preflight
from orchestrator.storage import Storage, StorageError
from tests.helpers import checkpoint_meta, free_port, spec_dict
from trainables.backbones import create_backbone
from trainables.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("checkpoint")
    save_checkpoint(folder, create_backbone("test_efficientnet", "none", num_classes=2), checkpoint_meta())
    return folder


def spec_testing_on(prepared, tests, storage):
    raw = spec_dict("finish", evaluation={"test": [str(test) for test in tests], "bootstrap": 10})
    return parse_spec({**raw, "data": {"prepared": str(prepared), "folds": 4}, "storage": str(storage)})


def finished(spec, prepared, checkpoint, run_dir):
    frame = pd.DataFrame(
        [
            {"trial_id": "a", "backbone": "test_efficientnet", "lr": 1e-3, "val_fold": 0, "val_source": ""},
            {"trial_id": "b", "backbone": "test_efficientnet", "lr": 1e-3, "val_fold": 0, "val_source": ""},
        ]
    ).assign(status="ok", best_val_auc=[0.8, 0.7], checkpoint=[str(checkpoint), None])
    manifest = read_manifest(prepared)
    frame = finish(frame, spec, manifest, prepared, str(prepared), run_dir, Storage(str(run_dir)))
    return frame, pd.read_csv(run_dir / "leaderboard.csv")


def test_the_leaderboard_gains_the_best_trials_test_columns(small_prepared, checkpoint, tmp_path):
    spec = spec_testing_on(small_prepared, [f"{small_prepared}@1"], tmp_path)
    frame, written = finished(spec, small_prepared, checkpoint, tmp_path / "run")
    assert written["test_roc_auc"].notna().tolist() == [True, False]
    assert "test_error" not in written and (tmp_path / "run" / "report" / "report.html").exists()


def test_a_test_that_fails_leaves_the_leaderboard_with_its_reason(
    small_prepared, checkpoint, tmp_path, caplog, capsys
):
    unreadable = tmp_path / "unreadable"
    for name in ("benign", "malignant"):
        (unreadable / name).mkdir(parents=True)
        (unreadable / name / "1.jpg").write_bytes(b"not a jpeg")
    spec = spec_testing_on(small_prepared, [unreadable], tmp_path)
    preflight(spec)  # lists the images, does not decode them: the failure comes after the training
    with caplog.at_level(logging.ERROR):
        frame, written = finished(spec, small_prepared, checkpoint, tmp_path / "run")
    assert written["trial_id"].tolist() == ["a", "b"] and written["best_val_auc"].tolist() == [0.8, 0.7]
    reason = written["test_error"][0]
    assert "unreadable" in reason and pd.isna(written["test_error"][1])  # only the trial to be tested
    assert f"testing failed: {reason}" in caplog.text
    assert summarise(spec, tmp_path / "run", frame) == 1  # after the leaderboard, the reason
    assert f"Testing the best trials failed: {reason}" in capsys.readouterr().out


def test_storage_that_fails_while_testing_leaves_the_published_leaderboard(
    small_prepared, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    spec = spec_testing_on(small_prepared, [f"{small_prepared}@1"], tmp_path)
    with pytest.raises(StorageError, match="cannot read s3://bucket/runs/checkpoint_1"):
        finished(spec, small_prepared, "s3://bucket/runs/checkpoint_1", tmp_path / "run")
    assert pd.read_csv(tmp_path / "run" / "leaderboard.csv")["trial_id"].tolist() == ["a", "b"]


@pytest.mark.parametrize(
    ("test", "message"),
    [
        ("{tmp}/missing", "evaluation.test: data not found: {tmp}/missing"),
        ("{prepared}@9", "evaluation.test: {prepared}@9: {prepared} has folds 0 to 3"),
        ("{tmp}", "evaluation.test: no usable images in {tmp}"),
    ],
)
def test_a_test_set_that_cannot_be_read_stops_the_sweep_before_training(
    small_prepared, tmp_path, test, message
):
    fill = {"tmp": tmp_path, "prepared": small_prepared}
    spec = spec_testing_on(small_prepared, [test.format(**fill)], tmp_path / "runs")
    with pytest.raises(UserError) as caught:
        preflight(spec)
    assert str(caught.value).startswith(message.format(**fill))
