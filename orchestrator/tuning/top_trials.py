"""After a sweep: the best trials tested on the internal test fold and the spec's test datasets.

Each tested trial gets its decision threshold from its own validation fold (Youden's J or a target
sensitivity), applied unchanged to every test set. The leaderboard gains `test_*` columns with 95%
bootstrap intervals (`test2_*` for a second set, ...); the best trial gets a full report (its
validation fold and the test sets side by side) under `<run>/report/`; TensorBoard gets the best
trial's ROC curve (the tested trials' metrics reach HParams with the leaderboard's).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from orchestrator.config import IN_SOURCE, Spec
from orchestrator.data.dataset_format import MANIFEST, read_manifest, source_names
from orchestrator.errors import UserError
from orchestrator.evaluation.clinical import Options, Targets
from orchestrator.evaluation.evaluate import evaluate_checkpoints
from orchestrator.storage import StorageError, local_copy, staging_dir
from orchestrator.tuning.leaderboard import by_configuration, configuration_keys

if TYPE_CHECKING:
    from orchestrator.evaluation.report import Section

log = logging.getLogger(__name__)

# (group in the evaluation summary, metric): the leaderboard's test columns
TEST_COLUMNS = [
    ("threshold_free", "roc_auc"),
    ("threshold_free", "pr_auc"),
    ("threshold_free", "partial_auc"),
    ("at_threshold", "sensitivity"),
    ("at_threshold", "specificity"),
    ("at_threshold", "balanced_accuracy"),
    ("at_threshold", "f1"),
]
TEST_ERROR = "test_error"  # why a trial that was to be tested was not
DIAGNOSIS_PREFIX = "diagnosis_"  # a diagnosis model's test columns: test_diagnosis_auc_melanoma, ...
# what the printed ensemble table shows of each test set (ensemble.csv holds every test column)
ENSEMBLE_SHOWN = ("roc_auc", "sensitivity", "specificity")
REPORT = "report"
ENSEMBLE_REPORT = "report-ensemble"
# a test metric's columns: its value and the bounds of its 95% interval
INTERVAL_KEYS = (("", "value"), ("_low", "low"), ("_high", "high"))
TENSORBOARD = "test-results"
ROC_IMAGE = "val/roc_of_the_best_trial"  # beside the curves: its validation fold (and any test sets)
CONFUSION_IMAGE = "diagnosis/confusion_of_the_best_trial"  # a diagnosis model's, on its validation fold


def options_for(spec: Spec) -> Options:
    ev = spec.evaluation
    targets = Targets(fixed_specificity=ev.fixed_specificity, fixed_sensitivity=ev.fixed_sensitivity)
    return Options(ev.threshold, ev.target_sensitivity, targets, ev.tta, ev.bootstrap, spec.train.seed)


def warn_if_not_deduplicated(test: str, prepared: Path) -> None:
    path = Path(test.partition("@")[0])
    if path.resolve() == prepared.resolve() or not (path / MANIFEST).exists():
        return
    against = read_manifest(path).against
    if against is None or Path(against.reference).resolve() != prepared.resolve():
        log.warning(
            "%s was not de-duplicated against the training data %s: its scores may be optimistic "
            "(prepare it with --against %s)",
            path,
            prepared,
            prepared,
        )


def has_tests(spec: Spec) -> bool:
    """Whether the spec asks for test sets (the internal test fold or `evaluation.test`)."""
    return spec.data.test_fold is not None or bool(spec.evaluation.test)


def test_sets(spec: Spec, prepared: Path) -> list[str]:
    """The internal test fold (as PREPARED@FOLD), then the spec's test datasets."""
    internal = [f"{prepared}@{spec.data.test_fold}"] if spec.data.test_fold is not None else []
    return internal + spec.evaluation.test


def candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """Trials with a checkpoint validated on folds of every source, best first. A held-out source's
    trials are left out: their best epoch and threshold were chosen on that source, so testing them
    would report a score tuned on what it claims to generalise to."""
    found = frame[frame.get("checkpoint", pd.Series(dtype=object)).notna()]
    return found[found["val_source"] == IN_SOURCE] if "val_source" in found else found


def evaluate_top_trials(
    frame: pd.DataFrame, spec: Spec, prepared: Path, run_dir: Path, sections: list[Section] = ()
) -> pd.DataFrame:
    """The leaderboard with test columns for its `evaluation.top` best trials (with no test set:
    the leaderboard as it is). The best trial gets a report: its validation fold, the test sets and
    `sections` (a shortcut audit, held-out sources)."""
    tests = test_sets(spec, prepared)
    for test in tests:
        warn_if_not_deduplicated(test, prepared)
    from orchestrator.evaluation.report import write_report

    frame = frame.copy()
    tested = candidates(frame).head(spec.evaluation.top if tests else 1)  # without tests: the report
    if tested.empty:
        log.warning("no trial validated on folds of every source has a checkpoint: no report, no test")
        return frame
    sources = source_names(read_manifest(prepared))
    for position, (index, row) in enumerate(tested.iterrows()):
        validation = f"{prepared}@{int(row['val_fold'])}"
        by_source = [f"{validation},{name}" for name in sources]
        data = [validation, *(by_source if len(sources) > 1 else []), *tests] if position == 0 else tests
        try:
            checkpoint = local_copy(row["checkpoint"], staging_dir("checkpoints"))  # from remote storage
            summary, scored = evaluate_checkpoints(
                [checkpoint], data, validation, options_for(spec), spec.data.cache
            )
        except StorageError:
            raise
        except Exception as err:  # this trial's test failed: say why, test the next
            if tests:
                frame.loc[index, TEST_ERROR] = failure(err)
            else:  # only the report was asked for: the sweep itself succeeded
                log.warning("the best trial's report was not written: %s", err, exc_info=True)
            continue
        if tests:
            frame.loc[index, "test_threshold"] = summary["threshold"]
        for column, value in test_columns(summary, tests).items():
            frame.loc[index, column] = value
        if position == 0:
            html = write_report(run_dir / REPORT, summary, scored, sections)
            log.info("best trial's report: %s", html)
    write_roc_image(run_dir)
    return frame


def test_columns(summary: dict, tests: list[str], who: str = "") -> dict[str, float]:
    """The leaderboard's test columns of one evaluated model (`who`: an ensemble's entry, e.g.
    `member 2`): `test_<metric>` for the first test set, `test2_<metric>` for the second, ..., each
    with `_low` and `_high`."""
    columns = {}
    for number, test in enumerate(tests, start=1):
        prefix = "test" if number == 1 else f"test{number}"
        for metric, cell in test_cells(summary, f"{test} · {who}" if who else test).items():
            columns.update({f"{prefix}_{metric}{end}": cell[key] for end, key in INTERVAL_KEYS})
    return columns


def test_cells(summary: dict, name: str) -> dict[str, dict]:
    """The test columns' cells ({"value", "low", "high"}) of evaluation entry `name`: TEST_COLUMNS,
    then a diagnosis model's own metrics as `diagnosis_<metric>` (`diagnosis_balanced_accuracy`
    is over the classes, `balanced_accuracy` over malignant and benign at the threshold)."""
    cells = {metric: summary["metrics"][name][group][metric] for group, metric in TEST_COLUMNS}
    diagnosis = summary.get("diagnosis", {}).get(name, {})
    cells.update({f"{DIAGNOSIS_PREFIX}{metric}": cell for metric, cell in diagnosis.items()})
    return cells


def failure(err: Exception) -> str:
    """Why a test failed, logged as an error (with the traceback where it is not the user's)."""
    why = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    log.error("testing failed: %s", why, exc_info=not isinstance(err, UserError))
    return why


def write_roc_image(run_dir: Path) -> None:
    """The best trial's ROC curve (and a diagnosis model's confusion matrix on its validation fold),
    for TensorBoard's Images tab, in `<run>/test-results`."""
    from PIL import Image
    from tensorboardX import SummaryWriter

    from orchestrator.evaluation.report import DIAGNOSIS_CONFUSION

    # the report's first dataset is the validation fold
    confusion = run_dir / REPORT / f"{DIAGNOSIS_CONFUSION}-1.png"
    pictures = {ROC_IMAGE: run_dir / REPORT / "roc.png", CONFUSION_IMAGE: confusion}
    found = {tag: path for tag, path in pictures.items() if path.exists()}
    if found:
        with SummaryWriter(str(run_dir / TENSORBOARD)) as writer:
            for tag, path in found.items():
                writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))


def ensemble_members(frame: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """The trials whose checkpoints make `evaluation.ensemble`: the N best, or (`folds`) every fold
    model of the configuration with the best mean over its folds."""
    found = candidates(frame)
    if spec.evaluation.ensemble != "folds":
        return found.head(spec.evaluation.ensemble)
    if found.empty:
        return found
    keys = configuration_keys(found)
    best = by_configuration(found, spec.scheduler.metric, spec.scheduler.resolved_mode).iloc[0]
    same = found[keys].astype(str) == best[keys].astype(str)  # NaN reads "nan" on both sides
    return found[same.all(axis=1)]


def evaluate_ensemble(frame: pd.DataFrame, spec: Spec, prepared: Path, run_dir: Path) -> pd.DataFrame | None:
    """The ensemble's test metrics and each member's, a row each (the ensemble first), and its
    report in `<run>/report-ensemble/`; None when fewer than two trials have a checkpoint."""
    members = ensemble_members(frame, spec)
    if len(members) < 2:
        log.warning("evaluation.ensemble needs two trials with a checkpoint; %d has one", len(members))
        return None
    from orchestrator.evaluation.report import write_report

    tests = test_sets(spec, prepared)
    checkpoints = [local_copy(c, staging_dir("checkpoints")) for c in members["checkpoint"]]
    summary, scored = evaluate_checkpoints(checkpoints, tests, None, options_for(spec), spec.data.cache)
    write_report(run_dir / ENSEMBLE_REPORT, summary, scored)
    rows = [{"model": "ensemble", **test_columns(summary, tests, "ensemble")}]
    for number, (_, trial) in enumerate(members.iterrows(), start=1):
        who = f"member {number}"
        shown = {key: trial[key] for key in ("trial_id", "backbone", "val_fold") if key in trial}
        rows.append({"model": who, **shown, **test_columns(summary, tests, who)})
    return pd.DataFrame(rows)
