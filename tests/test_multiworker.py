"""Two DDP workers in one trial (gloo on CPU): frozen start, all-reduced loss, a checkpoint per epoch;
and, with no `evaluation` section, the best trial's report and the sweep page all the same."""

import json
import re
import threading

import pytest

from orchestrator.config import parse_spec
from orchestrator.driver import run_sweep
from tests.helpers import own_train_workers, tiny_spec

pytestmark = pytest.mark.slow


def test_two_workers_train_one_trial(ray_local, tmp_path):
    spec = parse_spec(
        tiny_spec(
            tmp_path,
            "ddp",
            per_class=12,
            data={"image_size": 32},
            search={"batch_size": 8},
            train={"epochs": 2, "freeze_epochs": 1},
            resources={"workers_per_trial": 2, "cpus_per_worker": 0.5},
        )
    )
    seen: list[int] = []
    errors: list[Exception] = []
    done = threading.Event()

    def count_workers() -> None:  # the Train workers of this test's Ray instance, while the trial runs
        while not done.wait(0.5):
            try:
                seen.append(len(own_train_workers()))
            except Exception as err:  # the state API did not answer: say so below
                errors.append(err)

    counter = threading.Thread(target=count_workers)
    counter.start()
    try:
        run_dir, frame = run_sweep(spec)
    finally:
        done.set()
        counter.join()
    assert max(seen, default=0) == 2, (seen, errors[:3])
    row = frame.iloc[0]
    assert row["status"] == "completed" and row["epochs_run"] == 2, row.to_dict()
    reports = [json.loads(line) for line in next(run_dir.glob("*/result.json")).read_text().splitlines()]
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(r["train_loss"] > 0 for r in reports)
    assert len(list((run_dir / "checkpoints").glob("*/checkpoint_*/model.safetensors"))) == 2
    # no evaluation section: the best trial's report (on its validation fold) and the sweep's page,
    # each one file with its pictures inlined
    for page, pictures in (("report.html", 4), ("sweep.html", 1)):  # ROC, PR, reliability, confusion
        html = (run_dir / "report" / page).read_text()
        assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/]{100}', html)) == pictures, page
        assert not re.findall(r'<img src="(?!data:)', html), page
    assert "validation ROC-AUC per epoch" in (run_dir / "report" / "sweep.html").read_text()
