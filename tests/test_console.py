"""What a sweep prints: Ray's output to the run's log, the project's lines and warnings to the
console; the progress lines of trial events."""

import io
import subprocess
import sys
from types import SimpleNamespace

from orchestrator.config import parse_spec
from orchestrator.console import Progress, why_it_failed
from tests.helpers import ROOT, spec_dict

QUIET = """
import logging, os, sys
from pathlib import Path
from orchestrator.console import quiet_output

logging.basicConfig(level=logging.INFO)
print("before")
with quiet_output(Path(sys.argv[1])) as console:
    print("a print of Ray's")
    os.write(2, b"a C++ core message\\n")
    logging.getLogger("ray.tune").warning("a warning of Ray's")
    logging.getLogger("orchestrator.driver").info("an info line of ours")
    logging.getLogger("orchestrator.driver").warning("a warning of ours")
    print("a line for the user", file=console)
print("after")
try:
    with quiet_output(Path(sys.argv[1])):
        raise RuntimeError("a failed sweep")
except RuntimeError:
    print("the console is back after an error")
"""


def test_quiet_output_sends_rays_output_to_the_log_and_the_projects_lines_to_the_console(tmp_path):
    log = tmp_path / "run" / "sweep.log"
    done = subprocess.run(
        [sys.executable, "-c", QUIET, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "before",
        "a line for the user",
        "after",
        "the console is back after an error",
    ]
    assert done.stderr.splitlines() == ["WARNING: a warning of ours"]
    kept = log.read_text()
    for line in ("a print of Ray's", "a C++ core message", "a warning of Ray's", "an info line of ours"):
        assert line in kept
    assert "a line for the user" not in kept and "after" not in kept


def trial(number: int, status: str = "RUNNING", last: dict | None = None, **config) -> SimpleNamespace:
    error = "Traceback ...\nray.exceptions.RayTaskError: ...\nValueError: the loss is nan"
    return SimpleNamespace(
        trial_id=f"abc12_{number - 1:05d}",
        config=config,
        status=status,
        last_result=last or {},
        get_error=lambda: error,
        error_file=None,
    )


def epoch(number: int) -> dict:
    return {
        "epoch": number,
        "val_auc": 0.8125,
        "val_auc_low": 0.7,
        "val_auc_high": 0.93,
        "train_images_per_s": 31.2,
    }


def test_progress_names_each_trial_event_with_the_sweeps_progress():
    spec = parse_spec(
        spec_dict(
            search={"backbone": ["test_efficientnet", "test_vit"], "lr": [1e-3, 1e-4]},
            train={"epochs": 4, "weights": {"test_efficientnet": "none", "test_vit": "hub"}},
            scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2},  # compares at epoch 2
        )
    )
    out = io.StringIO()
    progress = Progress(spec, out)
    first, second = trial(1, backbone="test_efficientnet", lr=1e-3), trial(2, backbone="test_vit", lr=1e-4)
    third, fourth = trial(3, backbone="test_vit", lr=1e-3), trial(4, backbone="test_vit", lr=1e-3)
    progress.on_trial_start(0, [first, second, third, fourth], first)
    for number in (1, 2):
        progress.on_trial_result(0, [], first, epoch(number))
    first.last_result = epoch(2)
    progress.on_trial_complete(0, [], first)  # after epoch 2 of 4, a rung: stopped by ASHA
    progress.on_trial_result(0, [], third, epoch(1))
    third.last_result = epoch(1)
    progress.on_trial_complete(0, [], third)  # after epoch 1, no rung: Tune stopped it as the sweep ended
    progress.on_trial_recover(0, [], second)
    progress.on_trial_error(0, [], second)
    fourth.last_result = {"epoch": 1, "failure": "non-finite training loss"}
    progress.on_trial_complete(0, [], fourth)  # the loop ended the trial itself
    lines = out.getvalue().splitlines()
    assert lines[0] == "#1/4 started: test_efficientnet (random init), lr 0.001"
    assert lines[1].startswith("#1/4 epoch 1/4: val AUC 0.812 (95% CI 0.70-0.93), 31 img/s  [#")
    assert lines[1].endswith("] 1/16 epochs, 0:00")  # no estimate yet: the first epochs wait for Ray
    assert lines[2].endswith("] 2/16 epochs, 0:00")
    assert lines[3] == "#1/4 stopped early by the scheduler at epoch 2"
    assert lines[4].startswith("#3/4 epoch 1/4") and lines[4].endswith(
        "] 3/14 epochs, 0:00, at most ~0:00 left"
    )
    assert lines[5] == "#3/4 stopped after epoch 1: the sweep was interrupted"
    assert lines[6] == "#2/4 failed, restarting from its last checkpoint: ValueError: the loss is nan"
    assert lines[7] == "#2/4 failed after epoch 0: ValueError: the loss is nan"
    assert lines[8] == "#4/4 failed after epoch 0: non-finite training loss"
    # the most the sweep can still run: 16 epochs less 2 (#1), 3 (#3), 4 (#2) and 4 (#4)
    assert "] 3/3 epochs, 0:00" in progress.bar()


def test_a_resumed_sweep_counts_the_epochs_its_trials_ran_before():
    spec = parse_spec(
        spec_dict(search={"lr": [1e-3, 1e-4, 1e-5]}, train={"epochs": 4}, scheduler={"type": "fifo"})
    )
    progress = Progress(spec, io.StringIO())
    done = trial(1, status="TERMINATED", last=epoch(4), lr=1e-3)
    stopped = trial(2, status="TERMINATED", last=epoch(1), lr=1e-4)  # will not run again
    unfinished = trial(3, status="PENDING", last=epoch(2), lr=1e-5)
    progress.on_trial_start(0, [done, stopped, unfinished], unfinished)
    progress.on_trial_result(0, [], unfinished, epoch(3))
    # 4 + 1 + 2 epochs before, 1 now; of the 12 the grid holds, the stopped trial's 3 are never run
    assert "] 8/9 epochs" in progress.bar()


def test_a_failed_trials_reason_is_read_on_the_drivers_disk_when_the_storage_is_gone(tmp_path):
    def storage_gone():
        raise OSError("When getting information for key 'runs/x/error.txt': NETWORK_CONNECTION")

    failed = trial(1)
    failed.get_error = storage_gone
    assert why_it_failed(failed).startswith("its error could not be read (OSError: When getting")
    failed.error_file = str(tmp_path / "error.txt")  # Tune's copy, written as the trial failed
    (tmp_path / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-12-02_22-03-01)\nray.exceptions.RayTaskError(StorageError): ...\n"
        "trainables.storage.StorageError: cannot read s3://b/runs/x/checkpoint_000002: connection refused\n"
    )
    assert why_it_failed(failed) == (
        "trainables.storage.StorageError: cannot read s3://b/runs/x/checkpoint_000002: connection refused"
    )
    with open(failed.error_file, "a") as file:  # Tune appends each failure of the run
        file.write("Failure # 2 (occurred at 2026-12-02_22-03-09)\nThe actor died unexpectedly.\n")
    assert why_it_failed(failed) == "The actor died unexpectedly."
