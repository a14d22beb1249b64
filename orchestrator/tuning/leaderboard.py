"""The sweep's results as a leaderboard: one row per trial, best first, as CSV and Markdown."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from ray.tune import ResultGrid

from orchestrator.config import CONFIGURATION_AXES, IN_SOURCE, Spec, asha_rungs, split_of
from orchestrator.data.dataset_format import Manifest
from orchestrator.errors import error_reason
from orchestrator.storage import Storage
from orchestrator.tables import interval_text, to_markdown
from trainables.checkpoint import complete_checkpoints, rank
from trainables.metrics import REPORTED_METRICS

UNFINISHED = "unfinished"  # the status of a trial cut short by an interrupted sweep
SHOWN = [
    "rank",
    "backbone",
    "weights",
    "lr",
    "optimizer",
    "batch_size",
    "color",
    "validation",
    "val_fold",
    "status",
    "epochs_run",
]
# what a k-fold summary averages, from each fold's final epoch
CV_METRICS = ("val_auc", "val_recall_at_threshold", "val_specificity_at_threshold", "val_recall", "val_f1")
# what `summary` shows beside the ranking metric, from the best checkpoint, and under which names:
# the AUC's 95% interval and the operating point at the threshold picked on the validation fold
SUMMARY_METRICS = {
    "val_auc": "best_val_auc",
    "val_recall_at_threshold": "sensitivity",
    "val_specificity_at_threshold": "specificity",
}
AUC_INTERVAL = "auc_95%_ci"
# under the printed leaderboard: what its operating-point columns are
SUMMARY_NOTE = (
    "Every figure is the trial's best epoch on its validation images, picked on those same images, "
    "so optimistic; sensitivity and specificity are at the threshold (Youden's J) picked there too. "
    "An untouched test set measures them honestly (evaluation.test)."
)


def checkpoint_metas(checkpoints: Storage) -> dict[str, list[tuple[str, dict]]]:
    """Each trial's complete checkpoints (`checkpoint.is_complete`), as (location, metrics)."""
    found: dict[str, list[tuple[str, dict]]] = {}
    for folder, meta in complete_checkpoints(checkpoints):
        trial, _, name = folder.partition("/")
        if name.startswith("checkpoint_") and "/" not in name:
            found.setdefault(trial, []).append((checkpoints.uri_of(folder), meta.metrics))
    return found


def best_checkpoint(kept: list[tuple[str, dict]], metric: str, mode: str) -> tuple[str, dict] | None:
    """The kept checkpoint of one trial that scored best on `metric` (on a tie, the earlier epoch),
    with its metrics."""
    scored = [
        (location, metrics) for location, metrics in kept if not math.isnan(metrics.get(metric, math.nan))
    ]
    if not scored:
        return None
    return max(scored, key=lambda found: (rank(found[1], metric, mode), found[0]))  # then: a fixed order


def reported(metrics) -> list[str]:
    """REPORTED_METRICS, then the metrics of `metrics` (a dict or a history's columns) that a
    diagnosis task reports besides them, in the order reported."""
    return [
        *REPORTED_METRICS,
        *(name for name in metrics if name.startswith("val_") and name not in REPORTED_METRICS),
    ]


def _cell(value):
    """A reported value as a leaderboard cell: a number as a float, text (`val_confusion`) as it is."""
    return value if isinstance(value, str) else float(value)


def _status(result, epochs_run: int, spec: Spec) -> tuple[str, str]:
    failure = (result.metrics or {}).get("failure")
    if failure:  # the train loop ended the trial itself, e.g. on a non-finite loss
        return "failed", str(failure)
    if result.error is not None:
        return "failed", error_reason(str(result.error))
    if epochs_run >= spec.train.epochs:
        return "completed", ""
    # ASHA stops a trial only where it compares trials; one that ended elsewhere was cut short (the
    # sweep was interrupted): --resume finishes it
    return ("stopped early" if epochs_run in asha_rungs(spec) else UNFINISHED), ""


def _epochs_completed(history: pd.DataFrame | None) -> int:
    """Epochs that reported validation metrics (a failure report is not a completed epoch)."""
    if history is None or "val_loss" not in history:
        return 0
    done = history["epoch"][history["val_loss"].notna()]
    return int(done.max()) if len(done) else 0


def build(results: ResultGrid, spec: Spec, kept: dict[str, list[tuple[str, dict]]]) -> pd.DataFrame:
    """One row per trial; `kept` holds each trial's checkpoints (see `checkpoint_metas`)."""
    metric, mode = spec.scheduler.metric, spec.scheduler.resolved_mode
    rows = []
    for result in results:
        trial_id = Path(result.path).name
        history = result.metrics_dataframe
        epochs_run = _epochs_completed(history)
        status, error = _status(result, epochs_run, spec)
        config = result.config or {}  # None for a trial whose actor died before it started
        weights = spec.train.weights_for(config["backbone"]) if config else None
        row = {
            "trial_id": trial_id,
            **config,
            **(split_of(config) if config else {}),
            "weights": weights if weights != "none" else "none (random init)",
            "status": status,
            "epochs_run": epochs_run,
        }
        found = best_checkpoint(kept.get(trial_id, []), metric, mode)
        if found:
            path, best = found
            row["best_epoch"] = best["epoch"]
            row.update({f"best_{m}": best.get(m) for m in reported(best)})
            row["checkpoint"] = path
        if history is not None:
            row.update({f"last_{m}": _cell(history[m].iloc[-1]) for m in reported(history) if m in history})
        row["error"] = error
        rows.append(row)
    frame = pd.DataFrame(rows)
    key = f"best_{metric}"
    if key not in frame:
        frame[key] = float("nan")
    frame = frame.sort_values(key, ascending=(mode == "min"), na_position="last", kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def by_configuration(frame: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """k-fold cross-validation: one row per configuration, the mean and standard deviation over its
    folds of the final epoch's validation metrics (and of the best epoch's `metric`), best first."""
    keys = configuration_keys(frame)
    frame = frame[frame["val_source"] == IN_SOURCE] if "val_source" in frame else frame
    completed = ("status", lambda status: int((status == "completed").sum()))
    columns = {"folds": ("val_fold", "count"), "completed": completed}
    for name in [f"best_{metric}"] + [f"last_{m}" for m in CV_METRICS]:
        if name in frame:
            columns[f"{name}_mean"] = (name, "mean")
            columns[f"{name}_std"] = (name, "std")
    table = frame.groupby(keys, sort=False, dropna=False).agg(**columns).reset_index()
    ranked = f"last_{metric}_mean" if f"last_{metric}_mean" in table else f"best_{metric}_mean"
    table = table.sort_values(ranked, ascending=(mode == "min"), na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def configuration_keys(frame: pd.DataFrame) -> list[str]:
    """The columns that tell configurations apart (validation splits do not)."""
    return [key for key in (*CONFIGURATION_AXES, "weights") if key in frame]


# the score columns of `by_held_out_source` (the others name the configuration)
HELD_OUT_SCORES = ("held_out_", "worst_held_out", "mean_held_out", "in_source_", "gap")


def by_held_out_source(frame: pd.DataFrame, metric: str = "val_auc") -> pd.DataFrame:
    """Leave-one-source-out: one row per configuration with its final-epoch `metric` on each held-out
    source (trained on the others), their worst and mean, and beside them the in-source
    cross-validation mean (trained and validated on folds of every source); ranked by the worst
    held-out score. The final epoch, not the best: picking epochs on the held-out source would leak."""
    keys = configuration_keys(frame)
    value = f"last_{metric}"
    rows = []
    for configuration, group in frame.groupby(keys, sort=False, dropna=False):
        row = dict(
            zip(keys, configuration if isinstance(configuration, tuple) else (configuration,), strict=True)
        )
        held = group[group["val_source"] != IN_SOURCE]
        for _, trial in held.iterrows():
            row[f"held_out_{trial['val_source']}"] = trial.get(value, float("nan"))
        scores = held[value] if value in held else pd.Series(float("nan"), index=held.index)
        inside = group.loc[group["val_source"] == IN_SOURCE, value] if value in group else scores.iloc[:0]
        row["held_out_scored"] = f"{int(scores.notna().sum())}/{len(scores)}"
        # a held-out trial without a score (it failed) must not leave the configuration its easier ones
        row["worst_held_out"] = scores.min(skipna=False)
        row["mean_held_out"] = scores.mean(skipna=False)
        row["in_source_folds"] = len(inside)
        row["in_source_mean"] = inside.mean() if len(inside) else float("nan")
        row["gap"] = row["in_source_mean"] - row["mean_held_out"]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(
        "worst_held_out", ascending=False, na_position="last", kind="stable"
    )
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def summary(frame: pd.DataFrame, metric: str, top: int = 10) -> pd.DataFrame:
    """The columns a reader scans first (a column whose value never changes is left out): the
    configuration, the ranking metric and, from the same best checkpoint, the ROC-AUC with its 95%
    interval and the operating point at the validation fold's threshold."""
    varying = ("val_fold", "validation", "color")
    shown = [c for c in SHOWN if c in frame and not (c in varying and frame[c].nunique() == 1)]
    if "validation" in shown and "val_fold" in shown:
        shown.remove("val_fold")
    table = frame[shown].copy()
    if metric != "val_auc" and f"best_{metric}" in frame:
        table[f"best_{metric}"] = frame[f"best_{metric}"]
        if {f"best_{metric}_low", f"best_{metric}_high"} <= set(frame):
            bounds = zip(frame[f"best_{metric}_low"], frame[f"best_{metric}_high"], strict=True)
            table[f"{metric.removeprefix('val_')}_95%_ci"] = [
                interval_text(low, high) for low, high in bounds
            ]
    for reported, name in SUMMARY_METRICS.items():
        if f"best_{reported}" in frame:
            table[name] = frame[f"best_{reported}"]
        if reported == "val_auc" and {"best_val_auc_low", "best_val_auc_high"} <= set(frame):
            bounds = zip(frame["best_val_auc_low"], frame["best_val_auc_high"], strict=True)
            table[AUC_INTERVAL] = [interval_text(low, high) for low, high in bounds]
    if "best_epoch" in frame:
        table["best_epoch"] = frame["best_epoch"]
    return table.head(top)


def overlap_note(frame: pd.DataFrame) -> str:
    """Which trials validated on the same images as the one with the best ROC-AUC score inside its
    95% interval (`metrics.auc_interval`): differences of that size are within the noise of those
    images. A rule of thumb, not a test. Empty without intervals."""
    columns = ["rank", "best_val_auc", "best_val_auc_low", "best_val_auc_high"]
    if not set(columns) <= set(frame):
        return ""
    split = [c for c in ("val_fold", "val_source") if c in frame]
    scored = frame.dropna(subset=columns[1:])
    if scored.empty:
        return ""
    leader = scored.loc[scored["best_val_auc"].idxmax()]
    same = scored[(scored[split] == leader[split]).all(axis=1)] if split else scored  # same images
    low, high = leader["best_val_auc_low"], leader["best_val_auc_high"]
    inside = same[(same["best_val_auc"] >= low) & (same.index != leader.name)]
    if len(same) < 2:
        return ""
    where = (
        f"trial ranked {int(leader['rank'])} (AUC {leader['best_val_auc']:.3f}, "
        f"95% CI {interval_text(low, high)})"
    )
    if inside.empty:
        return f"Every other trial's AUC on the same images lies below the 95% interval of the {where}."
    ranks = ", ".join(str(int(rank)) for rank in inside["rank"])
    many = len(inside) > 1
    whose = f"AUCs of the trials ranked {ranks} lie" if many else f"AUC of the trial ranked {ranks} lies"
    one_fold = all(frame[c].nunique(dropna=False) == 1 for c in split) and not leader.get("val_source")
    advice = " More validation images narrow the intervals (cross-validation: data.val_fold: all)."
    advice = advice if one_fold else ""
    return (
        f"The {whose} inside the 95% interval of the {where}: differences this small are within the "
        f"noise of these validation images (a rule of thumb, not a test).{advice}"
    )


def notes(frame: pd.DataFrame) -> list[str]:
    """What the printed leaderboard and the sweep page say under it."""
    return [note for note in (SUMMARY_NOTE, overlap_note(frame)) if note]


def held_out_note(manifest: Manifest, sources: list[str]) -> str:
    """What each held-out source holds, and where the images it shares with another source went."""
    counts = manifest.counts.per_source
    positive = manifest.positive_class
    sizes = ", ".join(
        f"{name} {sum(counts[name].values())} images ({counts[name][positive]} {positive})"
        for name in sources
    )
    across = manifest.cross_source_duplicates
    dropped = across.dropped_per_source if across is not None else {}
    shared = "; ".join(
        f"{n} {name} images are kept in an earlier-listed source" for name, n in dropped.items()
    )
    return f"Held-out sources: {sizes}." + (f" De-duplicated across sources: {shared}." if shared else "")


def write(frame: pd.DataFrame, out: Storage, name: str = "leaderboard", note: str = "") -> None:
    """`<name>.csv` and `<name>.md` (after `note`, if any), each replaced whole or left as it was."""
    out.write_atomic(f"{name}.csv", frame.to_csv(index=False).encode())
    out.write_atomic(f"{name}.md", ((note + "\n\n" if note else "") + to_markdown(frame)).encode())
