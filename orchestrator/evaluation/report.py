"""The evaluation report: PNG pictures, a self-contained HTML page and a Markdown summary."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
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
from trainables.diagnosis_metrics import class_key  # noqa: E402
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
# how each of the diagnosis metrics (trainables.diagnosis_metrics) but the per-class AUCs reads
DIAGNOSIS_LABELS = {
    "balanced_accuracy": "balanced multi-class accuracy (ISIC 2018-2019 ranking)",
    "mean_auc": "mean one-vs-rest ROC-AUC",
    "isic2017_score": "ISIC 2017 Part 3 score (mean of melanoma and seborrheic keratosis AUCs)",
}
SECTIONS = {
    "threshold_free": "Threshold-free",
    "at_threshold": "At the chosen threshold",
    "at_0.5": "At threshold 0.5",
}
# the pictures of a diagnosis model's confusion matrices, one per dataset (`-1.png`, ...)
DIAGNOSIS_CONFUSION = "diagnosis-confusion"
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


# the suffixes the driver gives a prepared copy's folder in the cache: a source's
# (`prepared_dataset`) and a test set's prepared against the training data (`test_dataset`)
CACHE_SUFFIX = re.compile(r"-\d+px-(\d+f-s\d+|against-.+)-[0-9a-f]{10}$")


def short_label(dataset: str) -> str:
    """A dataset as a reader names it: `.../prepared/isic-sample-128px-5f-s0-<hash>@0,kaggle` reads
    `isic-sample fold 0, source kaggle`; a folder of images, by its own name. An ensemble's entries
    keep what follows ` · ` (`ensemble`, `member 2`)."""
    dataset, dot, who = dataset.partition(" · ")
    path, _, part = dataset.rstrip("/").partition("@")
    name = CACHE_SUFFIX.sub("", Path(path).name) or path
    fold, _, source = part.partition(",")
    where = name + (f" fold {fold}" if fold else "") + (f", source {source}" if source else "")
    return where + (f" · {who}" if dot else "")


def relabelled(summary: dict, scored: list) -> tuple[dict, list, dict[str, str]]:
    """The summary and predictions with their datasets under `short_label`s (made unique), and the
    mapping from each label to the dataset it stands for."""
    labels: dict[str, str] = {}
    for dataset in summary["datasets"]:
        label = short_label(dataset)
        labels[dataset] = label if label not in labels.values() else dataset
    summary = {
        **summary,
        **{
            key: {labels[k]: v for k, v in summary[key].items()}
            for key in ("datasets", "metrics", "diagnosis", "confusion")
            if key in summary
        },
        "threshold_origin": _replaced(summary["threshold_origin"], labels),
    }
    scored = [dataclasses.replace(s, name=labels.get(s.name, s.name)) for s in scored]
    return summary, scored, {label: dataset for dataset, label in labels.items()}


def _replaced(text: str, labels: dict[str, str]) -> str:
    for dataset in sorted(labels, key=len, reverse=True):  # a longer name before its prefix
        text = text.replace(dataset, labels[dataset])
    return text


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
    if "diagnosis" in summary:
        tables.update(diagnosis_tables(summary))
    return tables


def diagnosis_tables(summary: dict) -> dict[str, pd.DataFrame]:
    """A diagnosis model's challenge metrics (a row per metric, a column per dataset) and, per
    dataset, the confusion matrix of its classes (a row per true class, a column per predicted)."""
    names = {class_key(name): name.replace("_", " ") for name in summary["classes"]}
    rows: dict[str, dict[str, str]] = {}
    for dataset, metrics in summary["diagnosis"].items():
        for metric, cell in metrics.items():
            text = f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"
            rows.setdefault(_diagnosis_label(metric, names), {})[dataset] = text
    tables = {"Diagnoses (the challenges' metrics)": pd.DataFrame.from_dict(rows, orient="index")}
    for dataset, matrix in summary["confusion"].items():
        true = [f"true {name}" for name in names.values()]
        table = pd.DataFrame(matrix, index=true, columns=[f"predicted {name}" for name in names.values()])
        tables[f"Confusion matrix of the diagnoses, {dataset}"] = table.rename_axis("images")
    return tables


def _diagnosis_label(metric: str, names: dict[str, str]) -> str:
    if metric.startswith("auc_"):
        return f"ROC-AUC, {names.get(metric.removeprefix('auc_'), metric)} vs the rest"
    return DIAGNOSIS_LABELS[metric]


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
    plot_matrix(matrix, ["benign", "malignant"], f"{s.name}\nthreshold {threshold:.3f}", path)


def plot_matrix(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """A confusion matrix: a row per true class, a column per predicted one, each cell's count and
    its share of the row."""
    matrix = np.asarray(matrix)
    k = len(classes)
    figure, axis = plt.subplots(figsize=(2.2 + 1.0 * k, 1.8 + 1.0 * k))
    axis.imshow(matrix / matrix.sum(1, keepdims=True).clip(1), cmap="Blues", vmin=0, vmax=1)
    for row in range(k):
        for column in range(k):
            share = matrix[row, column] / max(matrix[row].sum(), 1)
            axis.text(
                column,
                row,
                f"{matrix[row, column]}\n{share:.0%}",
                ha="center",
                va="center",
                color="white" if share > 0.6 else "black",
            )
    names = [name.replace("_", " ") for name in classes]
    axis.set(
        xticks=range(k),
        yticks=range(k),
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    if k > 2:
        plt.setp(axis.get_xticklabels(), rotation=30, ha="right")
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
    for index, (dataset, matrix) in enumerate(summary.get("confusion", {}).items()):
        name = f"{DIAGNOSIS_CONFUSION}-{index + 1}.png"
        plot_matrix(matrix, summary["classes"], f"{dataset}\nmost probable diagnosis", out / name)
        pictures.append((name, f"Confusion matrix of the diagnoses, {dataset} (the most probable class)"))
    return pictures


def _header(summary: dict, paths: dict[str, str]) -> list[tuple[str, str]]:
    described: dict[str, str] = {}  # an ensemble's entries of one dataset (` · member 1`, ...) once
    for entry, counts in summary["datasets"].items():
        where = paths.get(entry, entry).partition(" · ")[0]
        text = f"{counts['images']} images, {counts['malignant']} malignant ({where})"
        described.setdefault(entry.partition(" · ")[0], text)
    sets = "; ".join(f"{name}: {text}" for name, text in described.items())
    origin = summary["threshold_origin"]
    same = [k for k in summary["datasets"] if origin.startswith(f"chosen on {k} (")]
    caveat = (
        f"; its figures on {same[0]} are optimistic: chosen and measured on the same images" if same else ""
    )
    members = summary.get("members", [])
    if len(members) > 1:
        listed = "; ".join(
            f"member {i}: {m['checkpoint']} ({m['backbone']})" for i, m in enumerate(members, 1)
        )
        who = [("ensemble", f"the mean of {len(members)} models' class probabilities; {listed}")]
    else:
        who = [("checkpoint", summary["checkpoint"])]
    return [
        *who,
        ("backbone", summary["backbone"]),
        ("data", sets),
        ("threshold", f"{summary['threshold']:.4f}, {origin}{caveat}"),
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
    """Write metrics.json, predictions CSVs, PNGs, report.md and a self-contained report.html; the
    pictures and pages name each dataset by its `short_label`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    for index, s in enumerate(scored):
        frame = pd.DataFrame({"image_id": s.image_ids, "label": s.labels, "p_malignant": s.scores})
        if s.probabilities is not None and s.classes:
            for column, name in enumerate(s.classes):
                frame[f"p_{name}"] = s.probabilities[:, column]
            if s.diagnoses is not None:
                frame["diagnosis"] = [s.classes[i] for i in s.diagnoses]
        frame.to_csv(out / f"predictions-{index + 1}.csv", index=False)
    summary, scored, paths = relabelled(summary, scored)
    pictures = _pictures(out, summary, scored)
    for section in sections:
        if section.picture is not None:
            shutil.copy(section.picture, out / section.picture.name)
    tables = metric_tables(summary)
    header = _header(summary, paths)
    (out / "report.md").write_text(_markdown(header, tables, pictures, sections))
    (out / "report.html").write_text(_html(out, header, tables, pictures, sections))
    return out / "report.html"


def _markdown(
    header: list[tuple[str, str]],
    tables: dict[str, pd.DataFrame],
    pictures: Pictures,
    sections: list[Section],
) -> str:
    lines = ["# Evaluation report", ""]
    lines += [f"- **{key}**: {value}" for key, value in header] + [""]
    for title, table in tables.items():
        shown = table.rename_axis(table.index.name or "metric").reset_index()
        lines += [f"## {title}", "", to_markdown(shown), ""]
    lines += [f"![{caption}]({name})" for name, caption in pictures]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.text, "", to_markdown(section.table)]
        if section.picture is not None:
            lines += ["", f"![{section.caption}]({section.picture.name})"]
    return "\n".join(lines) + "\n"


def _html(
    out: Path,
    header: list[tuple[str, str]],
    tables: dict[str, pd.DataFrame],
    pictures: Pictures,
    sections: list[Section],
) -> str:
    """The page from templates/report.html.j2, every picture in `out` inlined."""

    def figure(name: str, caption: str) -> dict:
        data = base64.b64encode((out / name).read_bytes()).decode()
        return {"src": f"data:image/png;base64,{data}", "caption": caption}

    def table(frame: pd.DataFrame, index: bool = True) -> Markup:
        # pandas escapes every cell; an index's name would take a header row of its own
        return Markup(frame.rename_axis(None).to_html(escape=True, index=index))

    return TEMPLATES.get_template("report.html.j2").render(
        header=[(key, str(value)) for key, value in header],
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
