import pandas as pd

from orchestrator.storage import Storage
from orchestrator.tuning.leaderboard import best_checkpoint, checkpoint_metas, to_markdown
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
