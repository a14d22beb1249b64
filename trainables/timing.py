"""Wall-clock marks of a trial's life, for `benchmarks/trial_overhead.py`: when the environment
variable `ISIC_TIMING_LOG` names a file, each mark appends one JSON line to it (time, process,
event, trial); without it a mark does nothing."""

from __future__ import annotations

import json
import os
import time

TIMING_LOG = "ISIC_TIMING_LOG"


def mark(event: str, trial: str) -> None:
    path = os.environ.get(TIMING_LOG)
    if not path:
        return
    line = json.dumps({"time": time.time(), "pid": os.getpid(), "event": event, "trial": trial})
    with open(path, "a") as log:  # one short write per line: lines of several processes stay whole
        log.write(line + "\n")
