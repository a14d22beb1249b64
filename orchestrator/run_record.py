"""A run folder's name and record: what `--resume` reads before Ray, torch or timm are imported."""

from __future__ import annotations

import json
import re
import secrets
import time

from orchestrator.errors import UserError
from orchestrator.storage import Storage

RUN_RECORD = "run.json"
LEADERBOARD = "leaderboard"  # `leaderboard.csv` marks a finished run


def new_run_name(spec_name: str) -> str:
    """SPEC-DATE-TIME-XXXX: in time order, and apart for sweeps started in the same second."""
    return f"{spec_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def unfinished_run(storage: Storage, name: str) -> str:
    """The latest run of spec `name` in `storage` that has no leaderboard yet."""
    pattern = re.compile(rf"{re.escape(name)}-\d{{8}}-\d{{6}}(-[0-9a-f]{{4}})?")
    runs = [run for run in storage.listdir() if pattern.fullmatch(run)]
    unfinished = [run for run in runs if not storage.exists(f"{run}/{LEADERBOARD}.csv")]
    if not unfinished:
        listed = ", ".join(runs[-3:]) or "none"
        raise UserError(f"no unfinished run of '{name}' in {storage.uri} (its runs: {listed})")
    return unfinished[-1]


def read_run_record(run: Storage) -> dict:
    if not run.exists(RUN_RECORD):
        raise UserError(f"{run.uri} is not a run folder of this project (no {RUN_RECORD})")
    return json.loads(run.read_text(RUN_RECORD))
