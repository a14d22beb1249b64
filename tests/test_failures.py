"""Failures a sweep must survive: a Train worker killed mid-trial resumes from its checkpoint."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from orchestrator.config import parse_spec
from orchestrator.sweep import run_sweep
from tests.helpers import own_train_workers, tiny_spec
from trainables.checkpoint import newest_complete

pytestmark = pytest.mark.slow


def kill_worker_after_first_checkpoint(storage: Path, killed: list[int], timeout_s: float = 240) -> None:
    """Kill the trial's Train workers once a checkpoint is complete in storage: a meta.json alone is
    not enough, Ray Train may still be copying the weights beside it (a kill then rightly restarts
    the trial from scratch, and there is nothing to resume from)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if newest_complete(str(storage)) is not None:
            for pid in own_train_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            if killed:
                return
        time.sleep(0.2)


def test_killed_worker_resumes_from_its_last_checkpoint(ray_local, tmp_path):
    storage = tmp_path / "runs"
    # 8 epochs of about a second each: the kill (a state API call after the first complete
    # checkpoint) lands while epochs are left, or the trial would end before it
    spec = parse_spec(tiny_spec(tmp_path, "kill", train={"epochs": 8, "max_failures": 2}))
    killed: list[int] = []
    killer = threading.Thread(target=kill_worker_after_first_checkpoint, args=(storage, killed))
    killer.start()
    run_dir, frame = run_sweep(spec)
    killer.join()
    assert killed, "no Train worker was found to kill"
    row = frame.iloc[0]
    assert row["status"] == "completed" and row["epochs_run"] == 8, row.to_dict()
    results = (next(run_dir.glob("*/result.json"))).read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in results]
    assert sorted(set(epochs)) == list(range(1, 9)), epochs
    assert len(epochs) <= 9, epochs  # at most the epoch in flight is run again
    # the trial went on from a checkpoint after the kill, not from the start
    last = max(
        run_dir.glob("checkpoints/*/checkpoint_*/meta.json"),
        key=lambda p: json.loads(p.read_text())["metrics"]["epoch"],
    )
    assert json.loads(last.read_text())["resumed_after_epoch"] >= 1
