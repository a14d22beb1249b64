"""What a sweep prints: its plan, a line per trial event with the sweep's progress, and nothing of
Ray's own output, which goes to a log file in the run folder (`--verbose` brings it back).

`quiet_output` points the process's stdout and stderr (file descriptors 1 and 2: Tune's status
table, Ray's and its workers' logs, messages of Ray's C++ core) at the log file while the sweep
runs, and hands the console to `Progress`, a Tune callback on the driver. Warnings of the
project's own code reach the console too.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from orchestrator.config import Spec
from orchestrator.data.dataset_format import Manifest
from orchestrator.errors import error_reason
from orchestrator.storage import Storage

SWEEP_LOG = "sweep.log"  # in the run folder: everything Ray printed while the sweep ran
OWN_LOGGERS = ("orchestrator", "trainables")
BAR_WIDTH = 20


@contextmanager
def quiet_output(log_path: Path) -> Iterator[TextIO]:
    """Within: the process's stdout and stderr append to `log_path`; yields the console (what
    stdout was), line-buffered. The project's warnings still reach the console's stderr."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = open(os.dup(saved_out), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    errors = open(os.dup(saved_err), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    warnings = logging.StreamHandler(errors)
    warnings.setLevel(logging.WARNING)
    warnings.addFilter(lambda record: record.name.startswith(OWN_LOGGERS))
    warnings.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger().addHandler(warnings)
    try:
        yield console
    finally:
        logging.getLogger().removeHandler(warnings)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for stream in (console, errors):
            stream.close()
        os.close(saved_out)
        os.close(saved_err)


def print_plan(
    out: TextIO, spec: Spec, manifest: Manifest, run: Storage, log_path: Path | None, resumed: bool
) -> None:
    """What the sweep is about to do, where its results go, and where Ray's output goes."""
    if resumed:
        print(f"Resuming {run.uri}: its unfinished trials go on from their last checkpoints", file=out)
    else:
        axes = [axis for axis, values in spec.searched().items() if len(values) > 1]
        scheduler = spec.scheduler
        stops = (
            f"ASHA stops the weaker trials on {scheduler.metric} from epoch {scheduler.grace_period}"
            if scheduler.type == "asha"
            else "every trial runs to its last epoch"
        )
        grid = f" ({' x '.join(axes)})" if axes else ""
        print(
            f"Sweep: {len(spec.grid())} trials{grid}, up to {spec.train.epochs} epochs each; {stops}",
            file=out,
        )
    counts = manifest.counts
    classes = ", ".join(f"{n} {name}" for name, n in counts.per_class.items())
    folds = len(counts.per_fold)
    print(f"Data: {counts.total} images ({classes}), {folds} folds; {validation(spec, manifest)}", file=out)
    print(f"Results: {run.uri}", file=out)
    if log_path is not None:
        print(f"Ray's output: {log_path} (--verbose prints it here instead)", file=out)
    out.flush()


def validation(spec: Spec, manifest: Manifest) -> str:
    """Which images each trial validates on."""
    folds, sources = spec.data.val_folds, spec.data.val_sources
    per_fold = {fold: sum(classes.values()) for fold, classes in manifest.counts.per_fold.items()}
    parts = []
    if len(folds) == 1:
        parts.append(f"validating on fold {folds[0]} ({per_fold.get(str(folds[0]), 0)} images)")
    elif folds:
        parts.append(f"cross-validating on folds {', '.join(map(str, folds))}")
    if sources:
        parts.append(f"holding out each of the sources {', '.join(sources)}")
    return "; ".join(parts) or "no validation"


def trial_label(spec: Spec, config: dict) -> str:
    """A trial's configuration in the words that tell it from the others: the grid's varying axes
    (the backbone when none varies), a random-init backbone said so."""
    varying = [axis for axis, values in spec.searched().items() if len(values) > 1]
    parts = []
    for axis in varying or ["backbone"]:
        value = config.get(axis)
        if axis == "backbone":
            parts.append(f"{value} (random init)" if spec.train.weights_for(value) == "none" else str(value))
        else:
            parts.append(f"{axis} {value}")
    return ", ".join(parts)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return (
        f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
    )


def trial_number(trial: Any) -> int:
    """A trial's place in the grid, from 1 (Tune's ids end in _00000, _00001, ...)."""
    return int(str(trial.trial_id).rpartition("_")[2]) + 1


class Progress(Callback):
    """A line per trial start, epoch, early stop, failure and end, each epoch's with the sweep's
    progress: epochs done of the most it can run (every trial to its last epoch, less what early
    stops saved), time taken, and the time left at most, at the pace of the epochs so far."""

    def __init__(self, spec: Spec, out: TextIO) -> None:
        self.out, self.spec = out, spec
        self.epochs = spec.train.epochs
        self.trials = len(spec.grid())
        self.started = time.monotonic()
        self.first_epoch: float | None = None  # when the first epoch ended (the estimate starts there)
        self.done = 0  # epochs reported in this session
        self.saved = 0  # epochs that trials stopped early will not run
        self.last_epoch: dict[str, int] = {}

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the run: not the console
        return {**self.__dict__, "out": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, out=sys.stdout)

    def say(self, trial: Any, text: str) -> None:
        print(f"#{trial_number(trial)}/{self.trials} {text}", file=self.out, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(trial, f"started: {trial_label(self.spec, trial.config or {})}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = result.get("epoch")
        if epoch is None or result.get("failure"):
            return
        self.done += 1
        self.last_epoch[trial.trial_id] = int(epoch)
        if self.first_epoch is None:
            self.first_epoch = time.monotonic()
        auc, low, high = (result.get(key, math.nan) for key in ("val_auc", "val_auc_low", "val_auc_high"))
        interval = f" (95% CI {low:.2f}-{high:.2f})" if not (math.isnan(low) or math.isnan(high)) else ""
        speed = result.get("train_images_per_s")
        rate = f", {speed:.0f} img/s" if speed else ""
        self.say(trial, f"epoch {epoch}/{self.epochs}: val AUC {auc:.3f}{interval}{rate}  {self.bar()}")

    def bar(self) -> str:
        most = max(self.trials * self.epochs - self.saved, self.done, 1)
        filled = round(BAR_WIDTH * self.done / most)
        now = time.monotonic()
        elapsed = now - self.started
        # the time an epoch takes, from those after the first (which waits for Ray to start)
        since = now - self.first_epoch if self.first_epoch is not None else 0.0
        left = since / (self.done - 1) * (most - self.done) if self.done > 1 else math.nan
        estimate = f", up to ~{clock(left)} left" if self.done < most and not math.isnan(left) else ""
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"[{bar}] {self.done}/{most} epochs, {clock(elapsed)}{estimate}"

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if result.get("failure"):
            self.say(trial, f"failed: {result['failure']}")
            return
        ran = self.last_epoch.get(trial.trial_id, int(result.get("epoch", 0) or 0))
        if ran < self.epochs:
            self.saved += self.epochs - ran
            self.say(trial, f"stopped early by the scheduler after epoch {ran}")
        else:
            self.say(trial, "finished")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(trial, f"failed, restarting from its last checkpoint: {error_reason(trial.get_error())}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ran = self.last_epoch.get(trial.trial_id, 0)
        self.saved += self.epochs - ran
        self.say(trial, f"failed after epoch {ran}: {error_reason(trial.get_error())}")
