"""The CLI wrapper that prints a UserError (defined in `trainables.errors`) as one line."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from trainables.errors import UserError

__all__ = ["UserError", "command", "error_reason", "leave", "run_cli"]


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI entry point, then end the process (`leave`, which a caller cannot catch); a
    UserError becomes `error: ...` on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        leave(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    leave(code or 0)


def leave(code: int) -> NoReturn:
    """Exit with `code` once the command's threads, exit handlers and output are done, without
    tearing the interpreter down: with torch, Ray and pandas loaded, freeing every module and object
    takes 2 to 3 s, and the operating system frees them at once."""
    # what a normal exit runs, in its order: thread pools' exit hooks and the joins of threads,
    # then the exit handlers (Ray's shutdown, writers' flushes)
    threading._shutdown()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a closed stream
            stream.flush()
    os._exit(code)


def command(main: Callable[[list[str] | None], int | None]) -> Callable[[], None]:
    """A console-script entry point running `main` through `run_cli`."""
    return lambda: run_cli(main)


def error_reason(text: str | None) -> str:
    """The line of an error's text that says what went wrong: the last one naming an Error."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not lines:
        return "no reason recorded (see the run's log)"
    return next((line for line in reversed(lines) if "Error" in line), lines[-1])[:300]
