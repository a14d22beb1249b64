"""A running sweep's heartbeat: `heartbeat.json` in its run folder, rewritten every few seconds by
the driver while the trials run and removed when they end, so that `--resume` never starts a
second driver on a run whose first one is still going.

A run is live while its heartbeat is fresh and, on the machine that wrote it, the process that
wrote it is alive (a driver killed on this machine can be resumed at once; one on another machine
after FRESH_S seconds without a beat).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from orchestrator.errors import UserError
from orchestrator.storage import Storage, StorageError

HEARTBEAT = "heartbeat.json"
EVERY_S = 10.0
FRESH_S = 90.0  # a driver on another machine that wrote nothing for this long is gone


@contextmanager
def beating(run: Storage, every: float = EVERY_S) -> Iterator[None]:
    """Keep `run`'s heartbeat fresh while the block runs; remove it afterwards."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            with suppress(StorageError):  # the storage's own errors reach the user through the sweep
                _write_beat(run)

    _write_beat(run)  # the first one synchronously: a storage that fails says so at once
    thread = threading.Thread(target=beat, name="run-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with suppress(StorageError):  # a storage that fails: the error the block raised says so
            run.delete(HEARTBEAT)


def _write_beat(run: Storage) -> None:
    beat = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    run.write_atomic(HEARTBEAT, json.dumps(beat).encode())


def check_not_live(run: Storage, fresh: float = FRESH_S) -> None:
    """Raise a UserError when another driver is still running `run`: its heartbeat is fresh and,
    when it was written on this machine, the process that wrote it is alive."""
    if not run.exists(HEARTBEAT):
        return
    try:
        beat = json.loads(run.read_text(HEARTBEAT))
        host, pid, age = beat["host"], int(beat["pid"]), time.time() - float(beat["time"])
    except (ValueError, KeyError, TypeError):
        return  # cut short: its writer died mid-write
    here = host == socket.gethostname()
    if age >= fresh or (here and (pid == os.getpid() or not _alive(pid))):
        return
    who = f"process {pid} on this machine" if here else f"a driver on {host}"
    raise UserError(
        f"{run.uri} is still running ({who}, heard from {age:.0f} s ago); wait for it to finish or "
        f"stop it, then resume; if no driver runs it any more, delete {run.uri_of(HEARTBEAT)}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
