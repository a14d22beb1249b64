"""A sweep whose storage is S3 (a real S3 API on loopback: moto's server): everything it writes
lands in the bucket, nothing in the working directory, and a finished run can be resumed from its
URI to rebuild its leaderboard."""

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from ray._common.utils import get_default_ray_temp_dir

from tests.helpers import running_s3_server, tiny_spec, write_yaml

pytestmark = pytest.mark.slow


def scalar_tags(logdir: str) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir)
    accumulator.Reload()
    return accumulator.Tags()["scalars"]


def test_sweep_writes_everything_to_s3(s3_server, tmp_path, monkeypatch, without_local_ray):
    bucket = s3_server.create_bucket("sweeps")
    spec = write_yaml(
        tmp_path / "s3.yaml",
        tiny_spec(
            tmp_path,
            "s3",
            data={"folds": 4, "test_fold": 3},
            search={"lr": [1e-3, 3e-4]},
            train={"epochs": 2},
            evaluation={"top": 1, "bootstrap": 20},
        )
        | {"storage": "runs"},  # overridden by --storage: nothing may land here
    )
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {**os.environ, **s3_server.env}
    storage = f"s3://{bucket}/team/runs"

    def sweep(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "orchestrator.sweep", *args]
        return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)

    done = sweep(str(spec), "--storage", storage)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"full table: {storage}/s3-" in done.stdout
    # the console: the plan, a line per trial event, the leaderboard; Ray's output is in the run's log
    console = done.stdout + done.stderr
    for line in (
        "Sweep: 2 trials (lr)",
        "#1/2 started: lr 0.001",
        "#2/2 epoch 2/2: val AUC",
        "#2/2 finished",
    ):
        assert line in done.stdout, done.stdout
    assert len(done.stdout.splitlines()) < 60, done.stdout
    for ray_output in ("Trial status", "core_worker", "(pid=", "ray.", "Ray Tune"):
        assert ray_output not in console, console

    client = s3_server.client()
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    (run,) = {key.split("/")[2] for key in keys if key.startswith("team/runs/s3-")}
    files = {key.removeprefix(f"team/runs/{run}/") for key in keys if key.startswith(f"team/runs/{run}/")}
    for name in (
        "run.json",
        "leaderboard.csv",
        "leaderboard.md",
        "report/report.html",
        "report/roc.png",
        "sweep.log",
    ):
        assert name in files, sorted(files)
    assert any(name.startswith("test-results/events.out.tfevents") for name in files)
    trials = {name.split("/")[0] for name in files if name.endswith("/result.json")}
    assert len(trials) == 2
    for trial in trials:  # curves for TensorBoard and checkpoints, per trial
        assert any(name.startswith(f"{trial}/events.out.tfevents") for name in files)
        assert any(
            name.startswith(f"checkpoints/{trial}/checkpoint_") and name.endswith("model.safetensors")
            for name in files
        )
    assert any(
        key.startswith("team/runs/prepared/") and key.endswith("manifest.json") for key in keys
    )  # read by every node
    assert list(workdir.iterdir()) == []  # nothing written locally

    log = client.get_object(Bucket=bucket, Key=f"team/runs/{run}/sweep.log")["Body"].read().decode()
    assert "Trial status" in log  # Tune's table, whole: uploaded again after Ray shut down
    body = client.get_object(Bucket=bucket, Key=f"team/runs/{run}/leaderboard.csv")["Body"].read()
    frame = pd.read_csv(io.BytesIO(body))
    assert len(frame) == 2 and set(frame["status"]) == {"completed"}
    assert frame["checkpoint"].str.startswith(f"{storage}/{run}/checkpoints/").all()
    assert frame["test_roc_auc"].notna().sum() == 1  # the best trial, on the test fold

    for key, value in s3_server.env.items():  # TensorBoard reads the curves from the bucket
        monkeypatch.setenv(key, value)
    assert "val/auc" in scalar_tags(f"s3://{bucket}/team/runs/{run}/{sorted(trials)[0]}")

    client.delete_object(Bucket=bucket, Key=f"team/runs/{run}/leaderboard.csv")
    sessions = set(Path(get_default_ray_temp_dir()).glob("session_2*"))
    rebuilt = sweep("--resume", f"{storage}/{run}")  # all trials finished: only the leaderboard again
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert "all its trials have ended" in rebuilt.stdout
    assert set(Path(get_default_ray_temp_dir()).glob("session_2*")) == sessions  # no Ray instance started
    body = client.get_object(Bucket=bucket, Key=f"team/runs/{run}/leaderboard.csv")["Body"].read()
    # the same leaderboard, the best trial tested again on the test fold
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(body)), frame)


def test_storage_gone_mid_sweep_ends_with_a_clear_error(tmp_path, without_local_ray):
    spec = write_yaml(
        tmp_path / "vanishing.yaml", tiny_spec(tmp_path, "vanishing", train={"epochs": 4, "max_failures": 1})
    )
    log = tmp_path / "sweep.log"
    with running_s3_server() as s3:
        bucket = s3.create_bucket("vanishing")
        command = [sys.executable, "-m", "orchestrator.sweep", str(spec), "--storage", f"s3://{bucket}/runs"]
        sweep = subprocess.Popen(
            command, env={**os.environ, **s3.env}, stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        client, deadline = s3.client(), time.monotonic() + 300
        while not any(
            key.endswith("meta.json") and "/checkpoints/" in key
            for key in (obj["Key"] for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []))
        ):
            assert sweep.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        s3.stop()  # the storage goes away after the first epoch's checkpoint
        code = sweep.wait(timeout=600)
    output = log.read_text()
    error = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 2 and error, output[-3000:]
    assert f"s3://{bucket}/runs/vanishing-" in error[-1] and "--resume" in error[-1]
    # the trial's failures name their cause, the storage (read where Tune wrote them, not from it)
    failures = [line for line in output.splitlines() if line.startswith("#1/1 failed")]
    named = (f"s3://{bucket}/", f"in bucket '{bucket}'")
    for line in failures or [""]:
        assert any(name in line for name in named) and "could not be read" not in line, output
