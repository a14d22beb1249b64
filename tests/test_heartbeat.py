"""A run being driven cannot be resumed by a second driver; runs started in the same second apart."""

import json
import os
import subprocess
import sys
import time

import pytest

from orchestrator.config import parse_spec
from orchestrator.driver import run_sweep
from orchestrator.errors import UserError
from orchestrator.heartbeat import HEARTBEAT, beating, check_not_live
from orchestrator.run_record import new_run_name, unfinished_run
from orchestrator.storage import Storage
from tests.helpers import spec_dict


def write_beat(run: Storage, **beat) -> None:
    run.write_atomic(
        HEARTBEAT, json.dumps({"host": os.uname().nodename, "time": time.time(), **beat}).encode()
    )


@pytest.fixture
def other_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    names = {new_run_name("demo") for _ in range(20)}
    assert len(names) == 20
    storage = Storage(str(tmp_path))
    for name in sorted(names):
        storage.child(name).write_atomic("run.json", b"{}")
    assert unfinished_run(storage, "demo") == max(names)


def test_a_heartbeat_is_kept_while_the_driver_works_and_removed_after(tmp_path):
    run = Storage(str(tmp_path / "run"))
    with beating(run, every=0.05):
        first = json.loads(run.read_text(HEARTBEAT))
        time.sleep(0.3)
        later = json.loads(run.read_text(HEARTBEAT))
        assert first["pid"] == os.getpid() and later["time"] > first["time"]
        check_not_live(run)  # its own driver may go on
    assert not run.exists(HEARTBEAT)


def test_a_run_whose_driver_is_alive_here_is_not_resumed(tmp_path, other_process):
    run = Storage(str(tmp_path / "run"))
    write_beat(run, pid=other_process)
    with pytest.raises(UserError, match=f"still running \\(process {other_process} on this machine, heard"):
        check_not_live(run)
    write_beat(run, pid=other_process, time=time.time() - 600)  # a stale beat: that pid was reused
    check_not_live(run)


def test_a_run_whose_driver_died_here_is_resumed_at_once(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    run = Storage(str(tmp_path / "run"))
    write_beat(run, pid=int(finished.stdout))
    check_not_live(run)


def test_a_driver_elsewhere_is_live_while_its_heartbeat_is_fresh(tmp_path):
    run = Storage(str(tmp_path / "run"))
    write_beat(run, host="another-node", pid=1)
    with pytest.raises(
        UserError, match=r"a driver on another-node, heard from \d+ s ago.*delete .*heartbeat"
    ):
        check_not_live(run)
    write_beat(run, host="another-node", pid=1, time=time.time() - 600)
    check_not_live(run)


def test_resume_refuses_a_live_run_before_ray_starts(tmp_path, other_process):
    spec = parse_spec(spec_dict("live", storage=str(tmp_path / "runs")))
    write_beat(Storage(spec.storage).child("live-run"), pid=other_process)
    with pytest.raises(UserError, match="live-run is still running"):
        run_sweep(spec, resume="live-run")
