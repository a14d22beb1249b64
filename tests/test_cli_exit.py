"""A command leaves without tearing the interpreter down (`errors.leave`), yet as a normal exit
would: its output complete, its exit handlers and threads done, its exit status kept."""

import subprocess
import sys

COMMAND = """
import atexit, sys, threading, time
from pathlib import Path
from orchestrator.errors import UserError, run_cli

def main(argv):
    atexit.register(lambda: Path(sys.argv[1]).write_text("handler ran"))
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done"))).start()
    print("x" * 100_000)  # more than a pipe's buffer, still in Python's when main returns
    if sys.argv[2] == "error":
        raise UserError("a mistake")
    return 3

run_cli(main)
"""


def test_a_command_exits_with_its_output_handlers_and_threads_done(tmp_path):
    for outcome, code in (("ok", 3), ("error", 2)):
        marker = tmp_path / outcome
        done = subprocess.run(
            [sys.executable, "-c", COMMAND, str(marker), outcome], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == code, done.stderr[-2000:]
        assert done.stdout.count("x") == 100_000 and "thread done" in done.stdout
        assert marker.read_text() == "handler ran"
        assert ("error: a mistake" in done.stderr) == (outcome == "error")
