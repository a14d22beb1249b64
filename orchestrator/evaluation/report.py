"""The evaluation report: PNG pictures, a self-contained HTML page and a Markdown summary."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, StrictUndefined  # noqa: E402
from markupsafe import Markup  # noqa: E402

from orchestrator.tables import to_markdown  # noqa: E402
from trainables.metrics import at_threshold, calibration_bins, confusion_counts, pr_points, roc_points  # noqa: E402

# how each of THRESHOLD_FREE_METRICS and THRESHOLD_METRICS (trainables.metrics) reads in the report
LABELS = {
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC (average precision)",
    "partial_auc": "partial AUC above {min_sensitivity:.0%} sensitivity (max {max_pauc:.2f})",
    "sensitivity_at_specificity": "sensitivity at {fixed_specificity:.0%} specificity",
    "specificity_at_sensitivity": "specificity at {fixed_sensitivity:.0%} sensitivity",
    "brier": "Brier score (lower is better)",
    "ece": "expected calibration error ({bins} bins, lower is better)",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "precision": "precision (PPV)",
    "sensitivity": "sensitivity (recall)",
    "specificity": "specificity",
    "f1": "F1",
}
SECTIONS = {
    "threshold_free": "Threshold-free",
    "at_threshold": "At the chosen threshold",
    "at_0.5": "At threshold 0.5",
}
# (file name in the report folder, caption) of each picture
Pictures = list[tuple[str, str]]
# report.html comes from templates/report.html.j2; every value but the tables (see _html) is escaped
TEMPLATES = Environment(
    loader=PackageLoader("orchestrator.evaluation"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _label(metric: str, targets: dict) -> str:
    return LABELS[metric].format(max_pauc=1 - targets["min_sensitivity"], **targets)


def metric_tables(summary: dict) -> dict[str, pd.DataFrame]:
    """One table per section: a row per metric, a column per dataset, 'value [low, high]'."""
    tables = {}
    for section, title in SECTIONS.items():
        rows = {}
        for dataset, groups in summary["metrics"].items():
            for metric, cell in groups[section].items():
                text = f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"
                rows.setdefault(_label(metric, summary["targets"]), {})[dataset] = text
        tables[title] = pd.DataFrame.from_dict(rows, orient="index")
    return tables


def _operating_point(labels, scores, threshold):
    point = at_threshold(labels, scores, threshold)
    return 1 - point["specificity"], point["sensitivity"], point["precision"]


def plot_roc(scored, threshold: float, min_sensitivity: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for index, s in enumerate(scored):
        fpr, tpr, _ = roc_points(s.labels, s.scores)
        line = axis.plot(fpr, tpr, label=s.name, color=f"C{index}")[0]
        for t, marker in ((0.5, "o"), (threshold, "*")):
            x, y, _ = _operating_point(s.labels, s.scores, t)
            axis.plot(x, y, marker, color=line.get_color(), markersize=11, markeredgecolor="black")
    axis.axhline(min_sensitivity, color="grey", linestyle=":", linewidth=1)
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    axis.plot([], [], "o", color="grey", label="threshold 0.5")
    axis.plot([], [], "*", color="grey", markersize=11, label=f"chosen threshold {threshold:.3f}")
    axis.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title="ROC")
    axis.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def plot_pr(scored, threshold: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for index, s in enumerate(scored):
        recall, precision = pr_points(s.labels, s.scores)
        axis.step(recall, precision, where="post", label=s.name, color=f"C{index}")
        for t, marker in ((0.5, "o"), (threshold, "*")):
            _, y, precision = _operating_point(s.labels, s.scores, t)
            axis.plot(y, precision, marker, color=f"C{index}", markersize=11, markeredgecolor="black")
        axis.axhline(s.labels.mean(), color=f"C{index}", linestyle=":", linewidth=0.8)
    axis.set(xlabel="sensitivity (recall)", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    axis.legend(loc="lower left", fontsize=8)
    _save(figure, path)


def plot_reliability(scored, bins: int, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    for index, s in enumerate(scored):
        count, predicted, observed = calibration_bins(s.labels, s.scores, bins)
        used = count > 0
        axis.plot(predicted[used], observed[used], "-", color=f"C{index}", label=s.name)
        axis.scatter(
            predicted[used], observed[used], s=10 + 200 * count[used] / count.max(), color=f"C{index}"
        )
    axis.set(
        xlabel="predicted P(malignant), mean per bin",
        ylabel="observed fraction malignant",
        title="Reliability (marker size: images per bin)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axis.legend(loc="upper left", fontsize=8)
    _save(figure, path)


def plot_confusion(s, threshold: float, path: Path) -> None:
    tp, fp, fn, tn = confusion_counts(s.labels, s.scores, threshold)
    matrix = np.array([[tn, fp], [fn, tp]])  # rows: true benign, malignant; columns: predicted
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    axis.imshow(matrix / matrix.sum(1, keepdims=True).clip(1), cmap="Blues", vmin=0, vmax=1)
    for row in range(2):
        for column in range(2):
            share = matrix[row, column] / max(matrix[row].sum(), 1)
            axis.text(
                column,
                row,
                f"{matrix[row, column]}\n{share:.0%}",
                ha="center",
                va="center",
                color="white" if share > 0.6 else "black",
            )
    axis.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["benign", "malignant"],
        yticklabels=["benign", "malignant"],
        xlabel="predicted",
        ylabel="true",
        title=f"{s.name}\nthreshold {threshold:.3f}",
    )
    _save(figure, path)


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pictures(out: Path, summary: dict, scored) -> Pictures:
    threshold, targets = summary["threshold"], summary["targets"]
    pictures = [
        (
            "roc.png",
            "ROC curves; circles: threshold 0.5, stars: the chosen threshold; dotted: the partial-AUC line",
        ),
        ("pr.png", "Precision-recall curves; dotted: each set's prevalence"),
        ("reliability.png", "Reliability diagram"),
    ]
    plot_roc(scored, threshold, targets["min_sensitivity"], out / "roc.png")
    plot_pr(scored, threshold, out / "pr.png")
    plot_reliability(scored, targets["bins"], out / "reliability.png")
    for index, s in enumerate(scored):
        name = f"confusion-{index + 1}.png"
        plot_confusion(s, threshold, out / name)
        pictures.append((name, f"Confusion matrix, {s.name}, at the chosen threshold"))
    return pictures


def _header(summary: dict) -> list[tuple[str, str]]:
    sets = ", ".join(
        f"{k}: {v['images']} images, {v['malignant']} malignant" for k, v in summary["datasets"].items()
    )
    return [
        ("checkpoint", summary["checkpoint"]),
        ("backbone", summary["backbone"]),
        ("data", sets),
        ("threshold", f"{summary['threshold']:.4f}, {summary['threshold_origin']}"),
        ("test-time augmentation", "flips and 90-degree rotations averaged" if summary["tta"] else "none"),
        ("intervals", f"95% stratified bootstrap, {summary['bootstrap']} resamples"),
    ]


@dataclass(frozen=True)
class Section:
    """A part of the report beyond the checkpoint's own metrics (e.g. the shortcut audit)."""

    title: str
    text: str
    table: pd.DataFrame
    picture: Path | None = None
    caption: str = ""


def write_report(out: Path, summary: dict, scored, sections: list[Section] = ()) -> Path:
    """Write metrics.json, predictions CSVs, PNGs, report.md and a self-contained report.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    for index, s in enumerate(scored):
        frame = pd.DataFrame({"image_id": s.image_ids, "label": s.labels, "p_malignant": s.scores})
        frame.to_csv(out / f"predictions-{index + 1}.csv", index=False)
    pictures = _pictures(out, summary, scored)
    for section in sections:
        if section.picture is not None:
            shutil.copy(section.picture, out / section.picture.name)
    tables = metric_tables(summary)
    (out / "report.md").write_text(_markdown(summary, tables, pictures, sections))
    (out / "report.html").write_text(_html(out, summary, tables, pictures, sections))
    return out / "report.html"


def _markdown(
    summary: dict, tables: dict[str, pd.DataFrame], pictures: Pictures, sections: list[Section]
) -> str:
    lines = ["# Evaluation report", ""]
    lines += [f"- **{key}**: {value}" for key, value in _header(summary)] + [""]
    for title, table in tables.items():
        lines += [f"## {title}", "", to_markdown(table.rename_axis("metric").reset_index()), ""]
    lines += [f"![{caption}]({name})" for name, caption in pictures]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.text, "", to_markdown(section.table)]
        if section.picture is not None:
            lines += ["", f"![{section.caption}]({section.picture.name})"]
    return "\n".join(lines) + "\n"


def _html(
    out: Path, summary: dict, tables: dict[str, pd.DataFrame], pictures: Pictures, sections: list[Section]
) -> str:
    """The page from templates/report.html.j2, every picture in `out` inlined."""

    def figure(name: str, caption: str) -> dict:
        data = base64.b64encode((out / name).read_bytes()).decode()
        return {"src": f"data:image/png;base64,{data}", "caption": caption}

    def table(frame: pd.DataFrame, index: bool = True) -> Markup:
        return Markup(frame.to_html(escape=True, index=index))  # pandas escapes every cell

    return TEMPLATES.get_template("report.html.j2").render(
        header=[(key, str(value)) for key, value in _header(summary)],
        tables=[(title, table(frame)) for title, frame in tables.items()],
        pictures=[figure(name, caption) for name, caption in pictures],
        sections=[
            {
                "title": section.title,
                "text": section.text,
                "table": table(section.table, index=False),
                "figure": figure(section.picture.name, section.caption) if section.picture else None,
            }
            for section in sections
        ],
    )
