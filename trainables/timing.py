"""Wall-clock marks of a trial's life, for the benchmarks (`trial_overhead.py`, `gpu_throughput.py`):
when the environment variable `ISIC_TIMING_LOG` names a file, each mark appends one JSON line to
it (time, process, event, trial); without it a mark does nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TIMING_LOG = "ISIC_TIMING_LOG"


def mark(event: str, trial: str) -> None:
    path = os.environ.get(TIMING_LOG)
    if not path:
        return
    line = json.dumps({"time": time.time(), "pid": os.getpid(), "event": event, "trial": trial})
    with open(path, "a") as log:  # one short write per line: lines of several processes stay whole
        log.write(line + "\n")


def read_marks(path: Path) -> dict[str, dict[str, list[float]]]:
    """A timing log's marks: trial -> event -> the times it was marked, in order; {} with no log."""
    marks: dict[str, dict[str, list[float]]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        marks.setdefault(entry["trial"], {}).setdefault(entry["event"], []).append(entry["time"])
    for events in marks.values():
        for times in events.values():
            times.sort()  # several processes append to one log
    return marks
