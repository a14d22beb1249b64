"""Seeds make a CPU sweep repeatable, wherever its trials train (their own processes, one reused for
the next trial, or Ray Train workers); k-fold cross-validation trains each configuration on every fold."""

import json

import pandas as pd
import pytest

from orchestrator.config import parse_spec
from orchestrator.driver import run_sweep
from tests.helpers import tiny_spec

pytestmark = pytest.mark.slow

COMPARED = ["best_train_loss", "best_val_auc", "best_val_loss", "last_train_loss", "last_val_loss"]


def _spec(root, name: str, val_fold, train_in: str) -> dict:
    data = {"val_fold": val_fold, "image_size": 48}
    resources = {"train_in": train_in}
    return tiny_spec(root, name, per_class=15, data=data, train={"epochs": 2, "seed": 5}, resources=resources)


def test_same_seed_same_numbers_and_folds_aggregate(ray_local, tmp_path):
    # the folds' trials run in this order, the later ones in the first one's reused process
    cv_dir, cv = run_sweep(parse_spec(_spec(tmp_path, "cv", "all", "trial")))
    _, again = run_sweep(parse_spec(_spec(tmp_path, "again", 2, "ray_train")))

    assert sorted(cv["val_fold"]) == [0, 1, 2] and (cv["status"] == "completed").all()
    results = [json.loads(line) for path in cv_dir.glob("*/result.json") for line in path.open()]
    assert len(results) == 6 and len({result["pid"] for result in results}) == 1  # one process, reused
    fold2 = cv[cv["val_fold"] == 2].iloc[0]
    for column in COMPARED:
        assert fold2[column] == again.iloc[0][column], column  # bit for bit, not approximately

    summary = pd.read_csv(cv_dir / "leaderboard-cv.csv")
    assert len(summary) == 1 and summary["folds"].iloc[0] == 3
    assert summary["last_val_auc_mean"].iloc[0] == pytest.approx(cv["last_val_auc"].mean())
    assert summary["last_val_auc_std"].iloc[0] == pytest.approx(cv["last_val_auc"].std())
