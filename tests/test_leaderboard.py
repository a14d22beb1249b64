import pandas as pd

from orchestrator.storage import Storage
from orchestrator.tuning.leaderboard import (
    best_checkpoint,
    checkpoint_metas,
    overlap_note,
    summary,
    to_markdown,
)
from tests.helpers import checkpoint_meta
from trainables.checkpoint import newest_complete


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
        (tmp_path / "trial1" / name).mkdir(parents=True)
        (tmp_path / "trial1" / name / "model.safetensors").write_bytes(b"\0" * 100)
        metrics = {"val_auc": auc, "val_loss": loss, "epoch": int(name == "checkpoint_a")}
        meta = checkpoint_meta(metrics=metrics, files={"model.safetensors": 100})
        (tmp_path / "trial1" / name / "meta.json").write_text(meta.to_json())
    (tmp_path / "trial1" / "checkpoint_d").mkdir()  # being written: no meta.json yet
    cut_short = tmp_path / "trial1" / "checkpoint_e"
    cut_short.mkdir()
    (cut_short / "model.safetensors").write_bytes(b"\0" * 10)
    meta = checkpoint_meta(metrics={"val_auc": 0.99, "val_loss": 0.1}, files={"model.safetensors": 100})
    (cut_short / "meta.json").write_text(meta.to_json())
    half_written = tmp_path / "trial1" / "checkpoint_f"  # meta.json itself cut short
    half_written.mkdir()
    (half_written / "meta.json").write_text(meta.to_json()[:40])
    unlisted = tmp_path / "trial1" / "checkpoint_g"  # an older version's: records no files
    unlisted.mkdir()
    (unlisted / "meta.json").write_text(checkpoint_meta(metrics={"val_auc": 0.995, "epoch": 9}).to_json())
    kept = checkpoint_metas(Storage(str(tmp_path)))
    assert list(kept) == ["trial1"] and len(kept["trial1"]) == 3
    assert best_checkpoint(kept["trial1"], "val_auc", "max")[0] == str(tmp_path / "trial1" / "checkpoint_b")
    assert best_checkpoint(kept["trial1"], "val_loss", "min")[0].endswith("checkpoint_a")
    assert best_checkpoint([], "val_auc", "max") is None
    # resuming follows the same rule: checkpoint_g (epoch 9) records no files, checkpoint_e is cut
    # short, and of the complete ones (epochs 1, 0, 0) checkpoint_a is the newest
    assert newest_complete(str(tmp_path / "trial1")) == (1, str(tmp_path / "trial1" / "checkpoint_a"))


def test_a_tie_goes_to_the_earlier_epoch_in_any_listing_order():
    # two epochs with the same validation AUC (common on a small validation set): the best is the
    # same checkpoint however the storage lists them, and so is the pairing of its numbers
    kept = [
        (f"checkpoint_{epoch}", {"val_auc": 0.64, "val_loss": loss, "epoch": epoch})
        for epoch, loss in ((1, 0.7), (2, 0.6))
    ]
    for order in (kept, kept[::-1]):
        assert best_checkpoint(order, "val_auc", "max")[0] == "checkpoint_1"
    ahead = [*kept, ("checkpoint_3", {"val_auc": 0.65, "val_loss": 0.9, "epoch": 3})]
    assert best_checkpoint(ahead[::-1], "val_auc", "max")[0] == "checkpoint_3"  # better wins, later or not


def ranked(aucs: list[tuple[float, float, float]], **columns) -> pd.DataFrame:
    """A leaderboard of trials with these (AUC, low, high), best first."""
    frame = pd.DataFrame(aucs, columns=["best_val_auc", "best_val_auc_low", "best_val_auc_high"])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame.assign(backbone="b", status="completed", **columns)


def test_the_summary_shows_each_aucs_interval_and_the_folds_operating_point():
    frame = ranked(
        [(0.85, 0.75, 0.95), (0.8, float("nan"), float("nan"))],
        best_val_recall_at_threshold=[0.9, 0.7],
        best_val_specificity_at_threshold=[0.6, 0.8],
        best_val_recall=[0.0, 0.5],  # the 0.5 threshold's, left to the full table
    )
    table = summary(frame, "val_auc")
    assert list(table.columns) == [
        "rank",
        "backbone",
        "status",
        "best_val_auc",
        "auc_95%_ci",
        "sensitivity",
        "specificity",
    ]
    assert list(table["auc_95%_ci"]) == ["0.75-0.95", ""]
    assert list(table["sensitivity"]) == [0.9, 0.7] and list(table["specificity"]) == [0.6, 0.8]


def test_the_note_names_the_trials_within_the_leaders_interval_on_the_same_images():
    close = ranked([(0.85, 0.75, 0.95), (0.80, 0.70, 0.90), (0.76, 0.65, 0.86), (0.70, 0.60, 0.80)])
    note = overlap_note(close)
    assert "AUCs of the trials ranked 2, 3 lie inside the 95% interval of the trial ranked 1" in note
    assert "(AUC 0.850, 95% CI 0.75-0.95)" in note and "not a test" in note
    one = overlap_note(close.iloc[[0, 1, 3]])
    assert "AUC of the trial ranked 2 lies inside" in one
    assert "data.val_fold: all" in one  # one validation fold: more images would narrow the intervals
    apart = overlap_note(ranked([(0.95, 0.9, 1.0), (0.8, 0.7, 0.9)]))
    assert apart.startswith("Every other trial's AUC on the same images lies below the 95% interval")
    assert overlap_note(ranked([(0.9, float("nan"), float("nan")), (0.8, 0.7, 0.9)])) == ""  # one scored
    assert overlap_note(pd.DataFrame({"rank": [1], "best_val_auc": [0.9]})) == ""  # older runs: no interval


def test_trials_validated_on_other_images_are_not_compared():
    # cross-validation: each fold's trials are scored on other images; the leader's fold alone counts
    folds = ranked([(0.85, 0.75, 0.95), (0.84, 0.74, 0.94), (0.80, 0.70, 0.90)], val_fold=[0, 1, 0])
    note = overlap_note(folds)
    assert "AUC of the trial ranked 3 lies inside" in note and "ranked 2" not in note
    assert "data.val_fold: all" not in note  # cross-validation already
    alone = ranked([(0.85, 0.75, 0.95), (0.84, 0.74, 0.94)], val_fold=[0, 1])
    assert overlap_note(alone) == ""  # nothing else on the leader's images
