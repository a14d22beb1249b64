"""The cluster path without a cloud: `ray start --head`, then `ray job submit` of the default
experiment, as the README shows; the job server takes only requests carrying the cluster's token."""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import ROOT, free_port, session_pids

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
# the default experiment, shortened: 2 trials (both backbones) of 1 epoch
SHORTER = ["--set", "train.epochs=1", "--set", "search.lr=[1.0e-3]", "--set", "search.optimizer=[adam]"]


@pytest.fixture
def ray_head(tmp_path, without_local_ray):
    """A Ray head started with `ray start` in a session of its own, with token authentication and
    a token file of its own; stopped by killing that session's processes only (`ray stop` would
    stop every Ray instance on the machine)."""
    temp = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",  # the job's `python` is this environment's
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    dashboard = free_port()
    start = subprocess.Popen(
        [RAY, "start", "--head", f"--port={free_port()}", f"--dashboard-port={dashboard}", "--num-cpus=2"]
        + [f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = start.communicate(timeout=120)
    assert start.returncode == 0, output[-3000:]
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for pid in session_pids(start.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while session_pids(start.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not session_pids(start.pid), "processes of the Ray head are still running"


def get(url: str, bearer: str | None) -> tuple[int, bytes]:
    """The HTTP status and body the job server answers with (`bearer`: the token sent, if any)."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def job(
    address: str, env: dict, command: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`ray job COMMAND --address ADDRESS ARGS...`"""
    return subprocess.run(
        [RAY, "job", command, "--address", address, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit_when_the_agent_is_up(address: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit`, again while the new head's job agent is still starting (a loaded machine
    takes longer than `ray start` waits: the head answers 500 "No available agent")."""
    deadline = time.monotonic() + 120
    while True:
        submitted = job(address, env, "submit", *args)
        if "No available agent" not in submitted.stderr or time.monotonic() > deadline:
            return submitted
        time.sleep(3)


def test_default_experiment_submitted_as_a_ray_job(ray_head, tmp_path):
    address, env = ray_head
    storage = tmp_path / "runs"
    excludes = json.dumps({"excludes": [".git", ".devcarry", ".venv"]})  # beside .gitignore's

    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text()
    codes = [get(f"{address}/api/jobs/", bearer)[0] for bearer in (None, "not-the-token", token)]
    assert codes == [401, 403, 200]  # no token, a wrong one, the cluster's
    refused = job(address, {**env, "RAY_AUTH_TOKEN": "not-the-token"}, "list")
    assert refused.returncode != 0 and "Invalid authentication token" in refused.stderr

    submitted = submit_when_the_agent_is_up(
        address,
        env,
        "--submission-id=default-sweep",
        "--working-dir=.",
        f"--runtime-env-json={excludes}",
        "--no-wait",
        "--",
        "python",
        "-m",
        "orchestrator.sweep",
        *SHORTER,
        "--storage",
        str(storage),
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline = time.monotonic() + 600
    while (status := json.loads(get(f"{address}/api/jobs/default-sweep", token)[1])["status"]) in (
        "PENDING",
        "RUNNING",
    ):
        assert time.monotonic() < deadline, "the job did not finish in 10 minutes"
        time.sleep(2)
    logs = job(address, env, "logs", "default-sweep").stdout
    assert status == "SUCCEEDED", logs[-4000:]

    (run_dir,) = storage.glob("default-*")
    frame = pd.read_csv(run_dir / "leaderboard.csv")
    assert sorted(frame["backbone"]) == ["efficientnet_lite0", "mobilenetv2"]
    assert frame["best_val_auc"].notna().all()
    assert "Leaderboard (val_auc, best first)" in logs
    assert (run_dir / "run.json").exists()
    assert list(run_dir.glob("checkpoints/*/checkpoint_*/model.safetensors"))
