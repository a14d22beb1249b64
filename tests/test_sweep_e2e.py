"""A real sweep on a local Ray instance: Ray Data -> Ray Train -> Ray Tune (ASHA) -> leaderboard."""

import json
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.config import parse_spec
from orchestrator.driver import run_sweep
from orchestrator.evaluation.evaluate import evaluate_fold
from orchestrator.heartbeat import HEARTBEAT
from tests.helpers import copy_subset

pytestmark = pytest.mark.slow


def plugin_contents(events: Path, plugin: str) -> list[bytes]:
    """The plugin data an event file holds for `plugin` (none when it holds no such data)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    try:
        return list(accumulator.PluginTagToContent(plugin).values())
    except KeyError:
        return []


def hparam_sessions(run_dir: Path) -> dict[str, dict]:
    """The HParams sessions TensorBoard shows, by session (run folder) name: their hyperparameters,
    read back from the event files."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions: dict[str, dict] = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        for content in plugin_contents(events, "hparams"):
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                values = data.session_start_info.hparams
                name = events.parent.relative_to(run_dir).as_posix()
                sessions[name] = {
                    key: values[key].WhichOneof("kind") and _value(values[key]) for key in values
                }
    return sessions


def _value(proto) -> object:
    return getattr(proto, proto.WhichOneof("kind"))


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    source = copy_subset(root / "source", per_class=40)
    held_out = copy_subset(root / "held-out", per_class=15, skip=40)  # images no trial trains on
    spec = parse_spec(
        {
            "name": "e2e",
            "data": {
                "source": str(source),
                "folds": 4,
                "image_size": 64,
                "cache": str(root / "prepared"),
            },
            # The trial that learns runs first. The two with a learning rate of 1e-12 cannot lower
            # their training loss, so ASHA, comparing it at epoch 2, stops them. The last one's
            # learning rate is absurd: its loss diverges, which must end that trial alone.
            "search": {"backbone": "efficientnet_lite0", "lr": [1e-3, 1e-12, 1e-12, 1e30], "batch_size": 16},
            "train": {"epochs": 3, "weights": "package", "freeze_epochs": 1, "label_smoothing": 0.1},
            "scheduler": {"type": "asha", "metric": "train_loss", "grace_period": 2, "reduction_factor": 2},
            "evaluation": {"test": [str(held_out)], "top": 1, "bootstrap": 50},
            "storage": str(root / "runs"),
        }
    )
    run_dir, frame = run_sweep(spec)
    return spec, run_dir, frame


def test_one_leaderboard_row_per_trial(sweep):
    spec, run_dir, frame = sweep
    assert len(frame) == len(spec.grid()) == 4
    written = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(written) == 4 and list(written["rank"]) == [1, 2, 3, 4]
    assert "| rank |" in (run_dir / "leaderboard.md").read_text()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["spec"]["name"] == "e2e" and Path(record["prepared"]).is_dir()
    assert not (run_dir / HEARTBEAT).exists()  # the driver is done: the run may be resumed
    scored = frame[frame["status"] != "failed"]
    assert len(scored) == 3 and scored["best_train_loss"].is_monotonic_increasing  # best (lowest) first


def test_a_diverging_trial_fails_alone_with_its_reason(sweep):
    _, _, frame = sweep
    failed = frame[frame["status"] == "failed"]
    assert failed["lr"].tolist() == [1e30] and failed["rank"].tolist() == [4]
    assert "non-finite training loss" in failed["error"].iloc[0]
    # the head alone may survive epoch 1 with huge but finite logits; the unfrozen backbone cannot
    assert failed["epochs_run"].iloc[0] <= 1


def test_asha_stopped_a_trial_early(sweep):
    _, _, frame = sweep
    stopped = frame[frame["status"] == "stopped early"]
    assert len(stopped) >= 1, frame[["lr", "status", "epochs_run", "best_train_loss"]]
    assert (stopped["epochs_run"] < 3).all()
    assert frame[frame["status"] == "completed"]["lr"].tolist() == [1e-3]
    assert (frame[frame["status"] == "completed"]["epochs_run"] == 3).all()


def test_tensorboard_holds_the_projects_curves_and_one_hparams_session_per_leaderboard_row(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, frame = sweep
    for trial in frame["trial_id"]:
        (events,) = (run_dir / trial).glob("events.out.tfevents.*")
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags = accumulator.Tags()["scalars"]
        assert {"val/auc", "val/sensitivity_at_threshold", "train/loss"} <= set(tags), tags
        assert not [tag for tag in tags if tag.startswith("ray/")], tags  # Ray's counters are left out
        if trial == frame["trial_id"].iloc[0]:
            assert [event.step for event in accumulator.Scalars("val/auc")] == [1, 2, 3]  # epochs
    sessions = hparam_sessions(run_dir)
    # one per trial, named by rank: TensorBoard lists them in the leaderboard's order
    assert sorted(sessions) == [
        f"hparams/{rank:02d}-{trial}" for rank, trial in zip(frame["rank"], frame["trial_id"], strict=True)
    ]
    for (_, row), session in zip(
        frame.iterrows(), (sessions[name] for name in sorted(sessions)), strict=True
    ):
        assert set(session) == {"backbone", "lr", "weights", "status"}  # what varies, how, and the outcome
        assert session["weights"] == "package" and session["status"] == row["status"]


def test_best_trial_is_tested_on_held_out_images(sweep):
    spec, run_dir, frame = sweep
    best, second = frame.iloc[0], frame.iloc[1]
    assert best["test_roc_auc_low"] <= best["test_roc_auc"] <= best["test_roc_auc_high"]
    assert 0 < best["test_threshold"] < 1
    assert pd.isna(second.get("test_roc_auc"))  # evaluation.top: 1
    written = pd.read_csv(run_dir / "leaderboard.csv")
    assert written["test_sensitivity"].iloc[0] == pytest.approx(best["test_sensitivity"])
    page = (run_dir / "report" / "report.html").read_text()
    assert spec.evaluation.test[0] in page and f"@{int(best['val_fold'])}" in page
    summary = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert summary["datasets"][spec.evaluation.test[0]] == {"images": 30, "malignant": 15}


def test_tensorboard_shows_test_metrics_and_the_roc_curve(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, run_dir, _ = sweep
    metrics, images = set(), []
    for events in (run_dir / "test-results").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        images += accumulator.Tags()["images"]
    for events in (run_dir / "hparams").rglob("events.out.tfevents.*"):
        for content in plugin_contents(events, "hparams"):
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            metrics.update(m.name.tag for m in data.experiment.metric_infos)
    assert "val/roc_of_the_best_trial" in images
    assert {"test/roc_auc", "val/auc", "val/sensitivity_at_threshold"} <= metrics  # val/: the best epoch's


def test_a_tiny_fine_tune_learns(sweep):
    _, _, frame = sweep
    learner = frame[frame["lr"] == 1e-3].iloc[0]
    assert learner["best_val_auc"] > 0.75, learner.to_dict()  # 20 real validation images at 64 px
    assert learner["last_train_loss"] < frame[frame["lr"] == 1e-12]["last_train_loss"].min()


def test_best_checkpoint_reproduces_its_validation_auc(sweep):
    spec, run_dir, frame = sweep
    best = frame.iloc[0]
    # the run's own dataset: the cache also holds the prepared test set, listed in no fixed order
    prepared = Path(json.loads((run_dir / "run.json").read_text())["prepared"])
    scored = evaluate_fold(Path(best["checkpoint"]), prepared, int(best["val_fold"]))
    assert scored["val_auc"] == pytest.approx(best["best_val_auc"], abs=1e-6)
    assert scored["val_loss"] == pytest.approx(best["best_val_loss"], abs=1e-5)
    meta = json.loads((Path(best["checkpoint"]) / "meta.json").read_text())
    assert meta["backbone"] == "efficientnet_lite0" and meta["model"] == "tf_efficientnet_lite0"
    assert meta["threshold"] == pytest.approx(best["best_val_threshold"])
