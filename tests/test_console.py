"""What a sweep prints: Ray's output to the run's log, the project's lines and warnings to the
console; the progress lines of trial events."""

import io
import subprocess
import sys
from types import SimpleNamespace

from orchestrator.config import parse_spec
from orchestrator.console import Progress
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
"""


def test_quiet_output_sends_rays_output_to_the_log_and_the_projects_lines_to_the_console(tmp_path):
    log = tmp_path / "run" / "sweep.log"
    done = subprocess.run(
        [sys.executable, "-c", QUIET, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["before", "a line for the user", "after"]
    assert done.stderr.splitlines() == ["WARNING: a warning of ours"]
    kept = log.read_text()
    for line in ("a print of Ray's", "a C++ core message", "a warning of Ray's", "an info line of ours"):
        assert line in kept
    assert "a line for the user" not in kept and "after" not in kept


def trial(number: int, **config) -> SimpleNamespace:
    error = "Traceback ...\nray.exceptions.RayTaskError: ...\nValueError: the loss is nan"
    return SimpleNamespace(
        trial_id=f"abc12_{number - 1:05d}", config=config, last_result={}, get_error=lambda: error
    )


def test_progress_names_each_trial_event_with_the_sweeps_progress():
    spec = parse_spec(
        spec_dict(
            search={"backbone": ["test_efficientnet", "test_vit"], "lr": [1e-3, 1e-4]},
            train={"epochs": 4, "weights": {"test_efficientnet": "none", "test_vit": "hub"}},
        )
    )
    out = io.StringIO()
    progress = Progress(spec, out)
    first, second = trial(1, backbone="test_efficientnet", lr=1e-3), trial(2, backbone="test_vit", lr=1e-4)
    progress.on_trial_start(0, [], first)
    result = {
        "epoch": 1,
        "val_auc": 0.8125,
        "val_auc_low": 0.7,
        "val_auc_high": 0.93,
        "train_images_per_s": 31.2,
    }
    progress.on_trial_result(0, [], first, result)
    first.last_result = {"epoch": 2}
    progress.on_trial_result(0, [], first, {**result, "epoch": 2})
    progress.on_trial_complete(0, [], first)  # after 2 of 4 epochs: stopped by the scheduler
    progress.on_trial_recover(0, [], second)
    progress.on_trial_error(0, [], second)
    lines = out.getvalue().splitlines()
    assert lines[0] == "#1/4 started: test_efficientnet (random init), lr 0.001"
    assert lines[1].startswith("#1/4 epoch 1/4: val AUC 0.812 (95% CI 0.70-0.93), 31 img/s  [#")
    assert lines[1].endswith("] 1/16 epochs, 0:00")  # no estimate from the first epoch alone
    assert ", up to ~0:00 left" in lines[2]
    assert "2/16 epochs" in lines[2]
    assert lines[3] == "#1/4 stopped early by the scheduler after epoch 2"
    assert lines[4] == "#2/4 failed, restarting from its last checkpoint: ValueError: the loss is nan"
    assert lines[5] == "#2/4 failed after epoch 0: ValueError: the loss is nan"
    # the most the sweep can still run: 16 epochs less 2 that trial 1 and 4 that trial 2 will not
    assert "] 2/10 epochs, 0:00" in progress.bar()
