"""What a sweep prints: its plan, a line per trial event with the sweep's progress, and nothing of
Ray's own output, which goes to a log file in the run folder (`--verbose` brings it back).

`quiet_output` points the process's stdout and stderr (file descriptors 1 and 2: Tune's status
table, Ray's and its workers' logs, messages of Ray's C++ core) at the log file while the sweep
runs, and hands the console to `Progress`, a Tune callback on the driver. Warnings of the
project's own code reach the console too.
"""

from __future__ import annotations

import contextlib
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

from orchestrator.config import Spec, asha_rungs
from orchestrator.data.dataset_format import Manifest, task_labels
from orchestrator.data.pipeline import oversample_factors, train_class_counts
from orchestrator.errors import error_reason
from orchestrator.storage import Storage
from orchestrator.tables import interval_text

SWEEP_LOG = "sweep.log"  # in the run folder: everything Ray printed while the sweep ran
OWN_LOGGERS = ("orchestrator", "trainables")
BAR_WIDTH = 20


@contextmanager
def quiet_output(log_path: Path) -> Iterator[TextIO]:
    """Within: the process's stdout and stderr append to `log_path`; yields the console (what
    stdout was), line-buffered. The project's warnings in this process still reach the console's
    stderr (a trial's own go to the log with the rest of its output)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    with contextlib.ExitStack() as stack:
        saved = [os.dup(1), os.dup(2)]
        stack.callback(lambda: [os.close(fd) for fd in saved])
        console, errors = (
            stack.enter_context(open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace"))
            for fd in saved
        )
        with open(log_path, "ab") as log:
            stack.callback(_restore, saved)  # before any descriptor moves: a failed move is undone
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        warnings = logging.StreamHandler(errors)
        warnings.setLevel(logging.WARNING)
        warnings.addFilter(lambda record: record.name.startswith(OWN_LOGGERS))
        warnings.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logging.getLogger().addHandler(warnings)
        stack.callback(logging.getLogger().removeHandler, warnings)
        yield console


def _restore(saved: list[int]) -> None:
    """Standard output and error back where they were (`saved`: duplicates of the originals)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)


def print_plan(
    out: TextIO,
    spec: Spec,
    manifest: Manifest,
    run: Storage,
    log_path: Path | None,
    resumed: bool,
    ended: bool = False,
) -> None:
    """What the sweep is about to do, where its results go, and where Ray's output goes (`ended`:
    a resumed run whose trials have all ended)."""
    if ended:
        print(f"Resuming {run.uri}: all its trials have ended; its leaderboard is published again", file=out)
    elif resumed:
        print(f"Resuming {run.uri}: its unfinished trials go on from their last checkpoints", file=out)
    else:
        axes = spec.varying()
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
    labels = task_labels(manifest, spec.data.task, run.uri)
    counts = labels.counts
    classes = ", ".join(f"{n} {name}" for name, n in counts.per_class.items())
    folds = len(counts.per_fold)
    print(f"Data: {counts.total} images ({classes}), {folds} folds; {validation(spec, manifest)}", file=out)
    if labels.task == "diagnosis":
        malignant = " + ".join(labels.malignant)
        print(f"Task: {len(labels.classes)} diagnosis classes; P(malignant) = P({malignant})", file=out)
    growth = oversampled_epoch(spec, manifest)
    if growth is not None:
        print(
            f"Balance: oversampling makes each epoch {growth[0]} images, {growth[1]:.0f}x the training "
            "images (every class brought up to the largest); balance: class_weight keeps epochs as "
            "long as the data",
            file=out,
        )
    print(f"Results: {run.uri}", file=out)
    if log_path is not None:
        print(f"Ray's output: {log_path} (--verbose prints it here instead)", file=out)
    out.flush()


def oversampled_epoch(spec: Spec, manifest: Manifest) -> tuple[int, float] | None:
    """(images per epoch, times the training images) of the first split when oversampling makes an
    epoch more than 3 times as long as the data; None otherwise."""
    if spec.data.balance != "oversample":
        return None
    val_fold, val_source = spec.data.splits()[0]
    counts = train_class_counts(manifest, val_fold, spec.data.test_fold, val_source, spec.data.task)
    factors = oversample_factors(counts)
    images = round(sum(counts[label] * factors.get(label, 0) for label in counts))
    growth = images / max(sum(counts.values()), 1)
    return (images, growth) if growth > 3 else None


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
    parts = []
    for axis in spec.varying() or ["backbone"]:
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
    stops saved), time taken, and an estimate of the time left if every remaining epoch runs, at
    the pace of this session's epochs after the first (shown from the third)."""

    def __init__(self, spec: Spec, out: TextIO) -> None:
        self.out, self.spec = out, spec
        self.epochs = spec.train.epochs
        self.trials = len(spec.grid())
        self.rungs = set(asha_rungs(spec))
        self.seen = False  # the first callback counts what a resumed run had done before
        self.started = time.monotonic()
        self.first_epoch: float | None = None  # when the first epoch ended (the estimate starts there)
        self.reported = 0  # epochs reported in this session (the pace of the estimate)
        self.done = 0  # epochs the trials ran (a resumed run: before it too)
        self.saved = 0  # epochs that trials stopped early will not run
        self.last_epoch: dict[str, int] = {}

    def __getstate__(self) -> dict:  # Tune saves its callbacks with the run: not the console
        return {**self.__dict__, "out": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, out=sys.stdout)

    def count_earlier(self, trials: list) -> None:
        """A resumed run: the epochs its trials ran before, and those its ended trials will not."""
        if self.seen:
            return
        self.seen = True
        for trial in trials:
            ran = int((trial.last_result or {}).get("epoch") or 0)
            self.last_epoch[trial.trial_id] = ran
            self.done += ran
            if trial.status in ("TERMINATED", "ERROR"):
                self.saved += self.epochs - ran

    def say(self, trial: Any, text: str) -> None:
        print(f"#{trial_number(trial)}/{self.trials} {text}", file=self.out, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.count_earlier(trials)
        self.say(trial, f"started: {trial_label(self.spec, trial.config or {})}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        epoch = result.get("epoch")
        if epoch is None or result.get("failure"):
            return
        self.done += max(1, int(epoch) - self.last_epoch.get(trial.trial_id, int(epoch) - 1))
        self.last_epoch[trial.trial_id] = int(epoch)
        self.reported += 1
        if self.first_epoch is None:
            self.first_epoch = time.monotonic()
        scores = [score_text("val AUC", result, "val_auc")]
        metric = self.spec.scheduler.metric  # shown too when it has an interval of its own
        if metric != "val_auc" and f"{metric}_low" in result:
            scores.append(score_text(metric.removeprefix("val_"), result, metric))
        speed = result.get("train_images_per_s")
        rate = f", {speed:.0f} img/s" if speed else ""
        self.say(trial, f"epoch {epoch}/{self.epochs}: {', '.join(scores)}{rate}  {self.bar()}")

    def bar(self) -> str:
        most = max(self.trials * self.epochs - self.saved, self.done, 1)
        filled = round(BAR_WIDTH * self.done / most)
        now = time.monotonic()
        elapsed = now - self.started
        # the time an epoch takes, from those after the first (which waits for Ray to start)
        since = now - self.first_epoch if self.first_epoch is not None else 0.0
        left = since / (self.reported - 1) * (most - self.done) if self.reported > 2 else math.nan
        estimate = f", at most ~{clock(left)} left" if self.done < most and not math.isnan(left) else ""
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"[{bar}] {self.done}/{most} epochs, {clock(elapsed)}{estimate}"

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        ran = self.last_epoch.get(trial.trial_id, int(result.get("epoch", 0) or 0))
        self.saved += self.epochs - ran
        if result.get("failure"):
            self.say(trial, f"failed after epoch {ran}: {result['failure']}")
        elif ran >= self.epochs:
            self.say(trial, "finished")
        elif ran in self.rungs:  # ASHA compares trials at these epochs, and stops them only there
            self.say(trial, f"stopped early by the scheduler at epoch {ran}")
        else:  # a trial Tune stopped as the sweep ended (Ctrl-C)
            self.say(trial, f"stopped after epoch {ran}: the sweep was interrupted")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(trial, f"failed, restarting from its last checkpoint: {why_it_failed(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ran = self.last_epoch.get(trial.trial_id, 0)
        self.saved += self.epochs - ran
        self.say(trial, f"failed after epoch {ran}: {why_it_failed(trial)}")


def score_text(label: str, result: dict, metric: str) -> str:
    """`label 0.717 (95% CI 0.45-0.99)`: a reported metric, with its interval when it has one."""
    low, high = result.get(f"{metric}_low", math.nan), result.get(f"{metric}_high", math.nan)
    interval = f" (95% CI {ci})" if (ci := interval_text(low, high)) else ""
    return f"{label} {result.get(metric, math.nan):.3f}{interval}"


def last_failure(text: str) -> str:
    """The last failure in a trial's error file, which holds each of them after a `Failure # N` line."""
    return text[text.rfind("Failure # ") :] if "Failure # " in text else text


def why_it_failed(trial: Any) -> str:
    """The reason in a failed trial's error file: the copy Tune wrote on the driver's disk as the
    trial failed (`trial.error_file`), else the one in the run's storage; never raises (that
    storage may be what failed)."""
    try:
        written_here = trial.error_file
        if written_here and Path(written_here).is_file():
            return error_reason(last_failure(Path(written_here).read_text()))
        return error_reason(last_failure(trial.get_error() or ""))
    except Exception as err:
        return f"its error could not be read ({type(err).__name__}: {err}); see the run's log"
