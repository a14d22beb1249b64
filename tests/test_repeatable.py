"""Seeds make a CPU sweep repeatable; k-fold cross-validation trains each configuration on every fold."""

import pandas as pd
import pytest

from orchestrator.config import parse_spec
from orchestrator.sweep import run_sweep
from tests.helpers import tiny_spec

pytestmark = pytest.mark.slow

COMPARED = ["best_train_loss", "best_val_auc", "best_val_loss", "last_train_loss", "last_val_loss"]


def _spec(root, name: str, val_fold) -> dict:
    data = {"val_fold": val_fold, "image_size": 48}
    return tiny_spec(root, name, per_class=15, data=data, train={"epochs": 2, "seed": 5})


def test_same_seed_same_numbers_and_folds_aggregate(ray_local, tmp_path):
    cv_dir, cv = run_sweep(parse_spec(_spec(tmp_path, "cv", "all")))
    _, again = run_sweep(parse_spec(_spec(tmp_path, "again", 0)))

    assert sorted(cv["val_fold"]) == [0, 1, 2] and (cv["status"] == "completed").all()
    fold0 = cv[cv["val_fold"] == 0].iloc[0]
    for column in COMPARED:
        assert fold0[column] == again.iloc[0][column], column  # bit for bit, not approximately

    summary = pd.read_csv(cv_dir / "leaderboard-cv.csv")
    assert len(summary) == 1 and summary["folds"].iloc[0] == 3
    assert summary["last_val_auc_mean"].iloc[0] == pytest.approx(cv["last_val_auc"].mean())
    assert summary["last_val_auc_std"].iloc[0] == pytest.approx(cv["last_val_auc"].std())
