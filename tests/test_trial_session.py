"""A trial that trains in its own process keeps its checkpoints by the rule Ray Train applies, even
when the scheduler ends it inside a report, and resumes from the newest one when the checkpoint its
Tune pointer names is gone."""

import json
from pathlib import Path

import pytest
import ray.tune
import torch

from tests.helpers import checkpoint_meta
from trainables.errors import UserError
from trainables.session import REPORTED_FILE, TrialSession


def local_checkpoint(folder: Path, epoch: int, auc: float) -> Path:
    """A complete checkpoint folder, as the loop writes one before its report."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    meta = checkpoint_meta(metrics={"epoch": epoch, "val_auc": auc}, files={"model.safetensors": 64})
    (folder / "meta.json").write_text(meta.to_json())
    return folder


def session(storage: Path) -> TrialSession:
    return TrialSession("t", {}, str(storage), metric="val_auc", mode="max", keep=2, use_gpu=False)


def stopped_inside_the_report(metrics, checkpoint=None):
    raise SystemExit(0)  # how Tune ends a trial that its scheduler stops while the report waits


def test_a_trial_stopped_inside_its_report_keeps_the_best_and_the_newest(tmp_path, monkeypatch):
    storage, trial = tmp_path / "checkpoints", session(tmp_path / "checkpoints")
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint=None: None)
    for epoch, auc in ((1, 0.5), (2, 0.9), (3, 0.7), (4, 0.7)):  # a tie: the earlier epoch ranks higher
        trial.report({"epoch": epoch}, local_checkpoint(tmp_path / f"local{epoch}", epoch, auc))
    assert sorted(p.name for p in storage.iterdir()) == [
        "checkpoint_000002",
        "checkpoint_000003",
        "checkpoint_000004",
    ]

    monkeypatch.setattr(ray.tune, "report", stopped_inside_the_report)
    with pytest.raises(SystemExit):
        trial.report({"epoch": 5}, local_checkpoint(tmp_path / "local5", 5, 0.6))
    assert sorted(p.name for p in storage.iterdir()) == [
        "checkpoint_000002",
        "checkpoint_000003",
        "checkpoint_000005",
    ]


def test_a_pointer_to_a_removed_checkpoint_resumes_from_the_newest(tmp_path, monkeypatch):
    storage, trial = tmp_path / "checkpoints", session(tmp_path / "checkpoints")
    pointer = tmp_path / "pointer"
    pointer.mkdir()
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: ray.tune.Checkpoint.from_directory(pointer))
    (pointer / REPORTED_FILE).write_text(json.dumps({"checkpoint": "checkpoint_000003"}))
    local_checkpoint(storage / "checkpoint_000003", 3, 0.7)
    assert trial.registered().path == str(storage / "checkpoint_000003")
    (pointer / REPORTED_FILE).write_text(json.dumps({"checkpoint": "checkpoint_000001"}))  # removed since
    assert trial.registered() is None  # the loop takes the newest complete one (train_loop._resume_point)


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_a_trial_given_a_gpu_that_torch_cannot_see_says_how_to_train_on_cpu(tmp_path):
    with pytest.raises(UserError, match="gpus_per_worker=0"):
        TrialSession("t", {}, str(tmp_path), metric="val_auc", mode="max", keep=2, use_gpu=True)
