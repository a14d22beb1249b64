"""Failures a sweep must survive: the process that trains, killed mid-trial, resumes from its
checkpoint: a Ray Train worker (Ray Train restarts it) or a Tune trial's own process (Tune does)."""

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.config import parse_spec
from orchestrator.driver import run_sweep
from orchestrator.tuning.trial import KEPT_CHECKPOINTS
from tests.helpers import TRAIN_WORKER, own_actors, tiny_spec
from trainables.checkpoint import complete_checkpoints, newest_complete
from trainables.storage import Storage

pytestmark = pytest.mark.slow


def kill_after_first_checkpoint(
    storage: Path, processes: Callable[[], set[int]], killed: list[int], timeout_s: float = 240
) -> None:
    """Kill the `processes()` once a checkpoint is complete in storage: a meta.json alone is not
    enough, the weights beside it may still be copied (a kill then rightly restarts the trial from
    scratch, and there is nothing to resume from). They are looked up until found (Ray Train's
    workers while the first epoch trains: a state API call takes seconds on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    pids: set[int] = set()
    while time.monotonic() < deadline:
        if not pids:
            pids = processes()
        elif newest_complete(str(storage)) is not None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # it ended since it was looked up
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            return
        time.sleep(0.2)


def train_workers(earlier: set[int]) -> Callable[[], set[int]]:
    """This sweep's Ray Train workers: those alive now that were not before it started."""
    return lambda: own_actors(TRAIN_WORKER) - earlier


def trial_processes(storage: Path) -> Callable[[], set[int]]:
    """The process a trial trains in, as Tune records it with each result: nothing else on the Ray
    instance can be taken for it (a finished sweep's reused trial process may still be ending)."""

    def reported() -> set[int]:
        pids = set()
        for results in storage.glob("*/*/result.json"):
            with contextlib.suppress(ValueError, OSError):  # being written
                pids |= {json.loads(line)["pid"] for line in results.read_text().splitlines()}
        return pids

    return reported


@pytest.mark.parametrize("train_in", ["ray_train", "trial"])
def test_killed_worker_resumes_from_its_last_checkpoint(ray_local, tmp_path, train_in, capsys):
    storage = tmp_path / "runs"
    # 8 epochs of about a second each: the kill (at the first complete checkpoint) lands while
    # epochs are left, or the trial would end before it
    spec = parse_spec(
        tiny_spec(tmp_path, "kill", train={"epochs": 8, "max_failures": 2}, resources={"train_in": train_in})
    )
    killed: list[int] = []
    processes = trial_processes(storage) if train_in == "trial" else train_workers(own_actors(TRAIN_WORKER))
    killer = threading.Thread(target=kill_after_first_checkpoint, args=(storage, processes, killed))
    killer.start()
    run_dir, frame = run_sweep(spec)
    killer.join()
    assert killed, "no process that trains was found to kill"
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
    if train_in == "ray_train":
        return  # Ray Train keeps its own (after a restart, the checkpoints from before it too)
    # the console named the failure, and the restart (Ray Train restarts its workers by itself)
    assert "#1/1 failed, restarting from its last checkpoint: " in capsys.readouterr().out
    # what a trial that trains in its own process keeps: the newest checkpoint and the best others
    # by val_auc, as many as configured
    reported = {json.loads(line)["epoch"]: json.loads(line)["val_auc"] for line in results}
    kept = {meta.epoch for _, meta in complete_checkpoints(Storage(str(last.parent.parent)))}
    others, dropped = kept - {8}, set(reported) - kept
    assert 8 in kept and KEPT_CHECKPOINTS <= len(kept) <= KEPT_CHECKPOINTS + 1, kept
    assert min(reported[e] for e in others) >= max(reported[e] for e in dropped), (kept, reported)
