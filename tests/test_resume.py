"""The driver killed mid-sweep: `sweep SPEC --resume` finishes the unfinished trial from its last
checkpoint, leaves the finished one alone, and the leaderboard is complete."""

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT, kill_session, tiny_spec, write_yaml
from trainables.checkpoint import newest_complete
from trainables.session import REPORTED_FILE

pytestmark = pytest.mark.slow


def sweep_cli(*args: str, log: Path) -> subprocess.Popen:
    """`python -m orchestrator.sweep ARGS` in a process group of its own (with the Ray instance it
    starts), so that the whole group can be killed like a crashed machine."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", *args],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def registered_checkpoints(run_dir: Path) -> dict[str, dict[str, int]]:
    """Per trial, its checkpoints that a report delivered (what a restarted trial restores from),
    with their epochs: those Ray Train registered in the trial's checkpoint manager snapshot, or, for a
    trial that trains in its own process, the one its newest Tune checkpoint names."""
    found: dict[str, dict[str, int]] = {}
    for snapshot in run_dir.glob("checkpoints/*/checkpoint_manager_snapshot.json"):
        with contextlib.suppress(ValueError, OSError):  # being written
            results = json.loads(snapshot.read_text())["checkpoint_results"]
            found[snapshot.parent.name] = {r["checkpoint_dir_name"]: r["metrics"]["epoch"] for r in results}
    for pointer in run_dir.glob(f"*/checkpoint_*/{REPORTED_FILE}"):
        with contextlib.suppress(ValueError, OSError):  # being written, or replaced by a newer one
            trial, name = pointer.parent.parent.name, json.loads(pointer.read_text())["checkpoint"]
            meta = run_dir / "checkpoints" / trial / name / "meta.json"
            epoch = json.loads(meta.read_text())["metrics"]["epoch"]
            if epoch > max(found.get(trial, {"": 0}).values()):  # Tune adds the new one, then drops the old
                found[trial] = {name: epoch}
    return found


def reported_epochs(run_dir: Path, trial: str) -> list[int]:
    lines = (run_dir / trial / "result.json").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def test_killed_driver_resumes_unfinished_trials_only(tmp_path, without_local_ray):
    storage = tmp_path / "runs"
    spec = write_yaml(
        tmp_path / "resume.yaml",
        tiny_spec(tmp_path, "resume", search={"lr": [1e-3, 3e-4]}, resources={"max_concurrent_trials": 1}),
    )
    driver = sweep_cli(str(spec), log=tmp_path / "first.log")
    deadline = time.monotonic() + 400
    run_dir = tmp_path
    while len(kept := registered_checkpoints(run_dir)) < 2:  # the second trial is past epoch 1
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the second trial never reached a checkpoint"
        run_dir = next(storage.glob("resume-*"), tmp_path)
        time.sleep(0.2)
    assert kill_session(driver.pid) > 3  # the driver, GCS, raylet, workers ...
    driver.wait()

    assert (run_dir / "run.json").exists() and not (run_dir / "leaderboard.csv").exists()
    finished = next(trial for trial, epochs in kept.items() if max(epochs.values()) == 3)
    (unfinished,) = set(kept) - {finished}
    # what the trial resumes from: its newest complete checkpoint, the registered one or a newer one
    # written before the kill (epochs last about a second here, so the kill can land after either)
    done_before_kill, _ = newest_complete(str(run_dir / "checkpoints" / unfinished))
    assert done_before_kill >= max(kept[unfinished].values())
    finished_results = (run_dir / finished / "result.json").read_text()

    resumed = sweep_cli(str(spec), "--resume", log=tmp_path / "resume.log")
    assert resumed.wait(timeout=400) == 0, (tmp_path / "resume.log").read_text()[-3000:]

    frame = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(frame) == 2 and set(frame["status"]) == {"completed"}, frame.to_dict("records")
    assert set(frame["epochs_run"]) == {3}
    assert (run_dir / finished / "result.json").read_text() == finished_results  # not run again
    # the unfinished trial went on from its last checkpoint: no finished epoch was trained again
    metas = [json.loads(p.read_text()) for p in (run_dir / "checkpoints" / unfinished).glob("*/meta.json")]
    final = next(meta for meta in metas if meta["metrics"]["epoch"] == 3)
    assert final["resumed_after_epoch"] == done_before_kill, (done_before_kill, final["resumed_after_epoch"])
    reported = reported_epochs(run_dir, unfinished)  # Tune may not have flushed the lines before the kill
    assert len(reported) == len(set(reported)) and set(range(done_before_kill + 1, 4)) <= set(reported)
    print(
        f"killed with trial {unfinished} at epoch {done_before_kill + 1} in flight (newest complete "
        f"checkpoint: epoch {done_before_kill}); the resumed trial trained epochs {done_before_kill + 1}-3; "
        f"trial {finished} (finished) untouched; leaderboard rows {len(frame)}"
    )
