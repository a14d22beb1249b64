"""The sweep page, `<run>/report/sweep.html`: the leaderboard with each AUC's interval, every
trial's validation curve, and where the scheduler stopped which trial. One self-contained page
(its picture inlined), beside the best trial's report."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from markupsafe import Markup  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from orchestrator.config import CONFIGURATION_AXES, Spec, asha_rungs  # noqa: E402
from orchestrator.console import trial_label, trial_number  # noqa: E402
from orchestrator.evaluation.report import TEMPLATES  # noqa: E402
from orchestrator.tuning import leaderboard  # noqa: E402
from orchestrator.tuning.leaderboard import UNFINISHED  # noqa: E402
from trainables.metrics import RANKING_METRICS  # noqa: E402

SWEEP_PAGE = "sweep.html"
CURVES = "curves.png"
# how each trial's curve ends, by its leaderboard status
ENDS = {"completed": "o", "stopped early": "x", "failed": "X", UNFINISHED: "s"}
MARKERS = ", ".join(f"{'square' if marker == 's' else marker}: {status}" for status, marker in ENDS.items())


def curve_metric(spec: Spec) -> tuple[str, str]:
    """(the metric the curves show, how it reads): the validation ROC-AUC, or a diagnosis task's
    ranking metric when it is one of the task's own."""
    metric = spec.scheduler.metric
    if spec.data.task == "diagnosis" and metric.startswith("val_") and metric not in RANKING_METRICS:
        return metric, f"validation {metric.removeprefix('val_').replace('_', ' ')}"
    return "val_auc", "validation ROC-AUC"


def plot_curves(frame: pd.DataFrame, histories: dict[str, pd.DataFrame], spec: Spec, path: Path) -> None:
    """`curve_metric` per epoch of every trial, each curve's end marked by how the trial ended,
    ASHA's rungs dotted."""
    metric, name = curve_metric(spec)
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for _, row in frame.iterrows():
        history = histories.get(row["trial_id"])
        if history is None or metric not in history:
            continue
        points = history[["epoch", metric]].dropna()
        if points.empty:
            continue
        label = f"#{trial_number(row)} {trial_label(spec, row.to_dict())}"
        (line,) = axes.plot(points["epoch"], points[metric], marker=".", label=label)
        end = points.iloc[-1]
        marker = ENDS.get(row["status"], "o")
        axes.plot([end["epoch"]], [end[metric]], marker=marker, markersize=9, color=line.get_color())
    for epoch in asha_rungs(spec):
        axes.axvline(epoch, color="#999", linestyle=":", linewidth=1)
    axes.set_xlabel("epoch")
    axes.set_ylabel(name)
    axes.set_xlim(0.5, spec.train.epochs + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_sweep_page(
    out: Path, frame: pd.DataFrame, histories: dict[str, pd.DataFrame], spec: Spec, run_name: str
) -> Path:
    """Write `curves.png` and the self-contained `sweep.html` into `out`; return the page."""
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(frame, histories, spec, out / CURVES)
    metric = spec.scheduler.metric
    table = leaderboard.summary(frame, metric, top=len(frame))
    table.insert(1, "trial", [f"#{trial_number(row)}" for _, row in frame.iterrows()])
    fixed = [c for c in CONFIGURATION_AXES if c in table and c != "backbone" and table[c].nunique() == 1]
    table = table.drop(columns=fixed)
    at = asha_rungs(spec)
    stops = (
        f"ASHA compared the trials on {metric} at epoch{'s' if len(at) > 1 else ''} "
        f"{', '.join(map(str, at))} (dotted) and stopped the weaker ones there (x)."
        if at
        else "Every trial ran to its last epoch."
    )
    picture = base64.b64encode((out / CURVES).read_bytes()).decode()
    page = TEMPLATES.get_template("sweep.html.j2").render(
        name=run_name,
        trials=len(frame),
        fixed=", ".join(f"{c} {frame[c].iloc[0]}" for c in fixed),
        epochs=spec.train.epochs,
        notes=leaderboard.notes(frame),
        table=Markup(table.to_html(escape=True, index=False, na_rep="", float_format="{:.4g}".format)),
        curves=f"data:image/png;base64,{picture}",
        caption=f"{curve_metric(spec)[1].capitalize()} per epoch; {MARKERS}. {stops}",
        report=(out / "report.html").exists(),
    )
    (out / SWEEP_PAGE).write_text(page)
    return out / SWEEP_PAGE
