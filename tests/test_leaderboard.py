import json

import pandas as pd

from orchestrator.leaderboard import best_checkpoint, to_markdown


def test_markdown_table_escapes_pipes_and_blanks_nan():
    frame = pd.DataFrame({"rank": [1, 2], "error": ["a|b", ""], "best_val_auc": [0.91234, float("nan")]})
    lines = to_markdown(frame).splitlines()
    assert lines[0] == "| rank | error | best_val_auc |"
    assert lines[2] == "| 1 | a\\|b | 0.9123 |"
    assert lines[3] == "| 2 |  |  |"


def test_best_checkpoint_follows_the_metric_and_mode(tmp_path):
    for name, auc, loss in (
        ("checkpoint_a", 0.7, 0.4),
        ("checkpoint_b", 0.9, 0.6),
        ("checkpoint_c", float("nan"), 0.5),
    ):
        (tmp_path / name).mkdir()
        metrics = {"val_auc": auc, "val_loss": loss}
        (tmp_path / name / "meta.json").write_text(json.dumps({"metrics": metrics}))
    assert best_checkpoint(tmp_path, "val_auc", "max")[0].endswith("checkpoint_b")
    assert best_checkpoint(tmp_path, "val_loss", "min")[0].endswith("checkpoint_a")
    assert best_checkpoint(tmp_path / "none", "val_auc", "max") is None
