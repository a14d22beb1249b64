"""Clinical evaluation of a checkpoint, or of an ensemble of several: metrics with bootstrap
intervals, a decision threshold chosen on validation data, pictures and a report to open in a
browser.

    isic-evaluate CHECKPOINT [CHECKPOINT ...] DATA [DATA ...] [--threshold-from VAL_DATA] [--tta]
        [--threshold youden|sensitivity] [--target-sensitivity 0.9] [--bootstrap 1000] [--out DIR]

DATA is a prepared dataset, `PREPARED@FOLD` for one of its folds, `PREPARED@SOURCE` for one of its
sources, `PREPARED@FOLD,SOURCE` for both, or raw images (a folder per class or an ISIC layout),
prepared on the fly at the checkpoint's input size. Several DATA are
reported side by side (say, the internal validation fold and an external set). The threshold is
chosen on VAL_DATA and applied unchanged to every DATA; without --threshold-from it is the one the
checkpoint stored, chosen on its own validation fold.

Several checkpoints (the k fold models of one configuration, or a sweep's best trials) are an
ensemble: their class probabilities are averaged, each member scoring the images as it was
validated (its own input size and colour method), and the report shows the ensemble beside each
member. Their stored thresholds are averaged too, unless --threshold-from chooses one. A diagnosis
model scored on data with the same diagnoses also gets the challenge metrics (balanced accuracy,
one-vs-rest ROC-AUC per class, the ISIC 2017 score) and a confusion matrix of its classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch
from torch import nn

from orchestrator.data.dataset_format import MANIFEST, SHARDS
from orchestrator.data.prepare import prepare_once
from orchestrator.data.selection import check_data
from orchestrator.errors import UserError, command
from orchestrator.evaluation.clinical import Options, Targets, threshold_free
from orchestrator.storage import is_remote, local_copy, staging_dir
from trainables.checkpoint import META_FILE, CheckpointMeta, load_checkpoint
from trainables.diagnosis_metrics import confusion_matrix, with_intervals
from trainables.inference import malignant_probability, predict
from trainables.metrics import (
    THRESHOLD_METHODS,
    NoThreshold,
    at_threshold,
    bootstrap,
    choose_threshold,
    validation_metrics,
)
from trainables.precision import Normalize
from trainables.transforms import Preprocess

BATCH = 64
log = logging.getLogger(__name__)


@dataclass
class Scored:
    """One dataset's predictions by one model or ensemble."""

    name: str
    image_ids: list[str]
    labels: np.ndarray  # 1 malignant, 0 benign
    scores: np.ndarray  # P(malignant)
    probabilities: np.ndarray | None = None  # a diagnosis model's: a row per image, a column per class
    diagnoses: np.ndarray | None = None  # each image's true class among `classes`, where the data has it
    classes: list[str] | None = None


@dataclass(frozen=True)
class Member:
    """A checkpoint loaded for scoring."""

    path: Path
    model: nn.Module
    meta: CheckpointMeta


def fold_batches(
    prepared: Path,
    fold: int | None,
    preprocess: Preprocess,
    batch_size: int = BATCH,
    ids: list | None = None,
    source: str | None = None,
    diagnoses: list | None = None,
) -> Iterator[dict]:
    """uint8 image batches of `prepared` (one fold and/or one source, or all of it); image ids are
    appended to `ids`, and diagnoses (None where the data has none) to `diagnoses`."""
    dataset = pads.dataset(Path(prepared) / SHARDS, format="parquet")
    where = pads.field("fold") == fold if fold is not None else None
    if source is not None:
        same_source = pads.field("source") == source
        where = same_source if where is None else where & same_source
    columns = ["image_id", "image", "label"] + (["diagnosis"] if "diagnosis" in dataset.schema.names else [])
    scanner = dataset.scanner(columns=columns, filter=where, batch_size=batch_size)
    for record_batch in scanner.to_batches():
        if record_batch.num_rows == 0:
            continue
        rows = record_batch.to_pydict()
        if ids is not None:
            ids.extend(rows["image_id"])
        if diagnoses is not None:
            diagnoses.extend(rows.get("diagnosis", [None] * record_batch.num_rows))
        out = preprocess({"image": np.array(rows["image"], dtype=object), "label": np.array(rows["label"])})
        yield {"image": torch.from_numpy(out["image"]), "label": torch.from_numpy(out["label"])}


def preprocess_for(meta: CheckpointMeta) -> Preprocess:
    """Evaluation preprocessing as the checkpoint was validated: its input size, colour method and
    resize."""
    return Preprocess(meta.image_size, color=meta.color, resize=meta.resize)


def normalize_for(meta: CheckpointMeta) -> Normalize:
    return Normalize(meta.mean, meta.std, torch.device("cpu"))


def evaluate_fold(
    checkpoint: Path, prepared: Path, fold: int | None, source: str | None = None
) -> dict[str, float]:
    """Validation metrics of `checkpoint` on `fold` (or `source`) of `prepared`, exactly as the train
    loop reports them."""
    model, meta = load_checkpoint(Path(checkpoint))
    batches = fold_batches(prepared, fold, preprocess_for(meta), source=source)
    labels, probabilities = predict(model, batches, normalize_for(meta))  # the data's labels are 0/1
    return validation_metrics(labels, malignant_probability(probabilities, meta.positive_indices))


def score(
    model: nn.Module,
    meta: CheckpointMeta,
    name: str,
    prepared: Path,
    fold: int | None,
    tta: bool,
    source: str | None = None,
) -> Scored:
    ids: list[str] = []
    diagnoses: list[str | None] = []
    batches = fold_batches(prepared, fold, preprocess_for(meta), ids=ids, source=source, diagnoses=diagnoses)
    labels, probabilities = predict(model, batches, normalize_for(meta), tta=tta)
    if len(labels) == 0:
        raise UserError(f"{name}: no images to evaluate")
    # the data's labels are benign (0) or malignant (1), whatever classes the model has
    scores = malignant_probability(probabilities, meta.positive_indices)
    if meta.task != "diagnosis":
        return Scored(name, ids, labels, scores)
    unknown = sorted({str(d) for d in diagnoses if d not in meta.classes})
    if unknown:  # the binary metrics stand; the diagnosis metrics need the model's classes
        log.warning(
            "%s: no diagnosis metrics: its images' diagnoses (%s) are not all among the model's classes (%s)",
            name,
            ", ".join(unknown[:5]),
            ", ".join(meta.classes),
        )
        return Scored(name, ids, labels, scores, probabilities, None, list(meta.classes))
    truth = np.array([meta.classes.index(d) for d in diagnoses])
    return Scored(name, ids, labels, scores, probabilities, truth, list(meta.classes))


def ensemble_of(name: str, members: list[Scored]) -> Scored:
    """The members' scores of one dataset averaged (the mean of their class probabilities)."""
    first = members[0]
    for member in members[1:]:
        if member.image_ids != first.image_ids:
            differ = sorted(set(member.image_ids) ^ set(first.image_ids))[:5]
            raise UserError(
                f"{name}: {member.name} scored other images than {first.name} (e.g. {', '.join(differ)}): "
                "members of different input sizes prepared raw images apart; prepare the data once "
                "(isic-prepare) and evaluate on the prepared copy"
            )
    probabilities = None
    if first.probabilities is not None:
        probabilities = np.mean([member.probabilities for member in members], axis=0)
    scores = np.mean([member.scores for member in members], axis=0)
    return dataclasses.replace(first, name=name, scores=scores, probabilities=probabilities)


def load_members(checkpoints: list[Path]) -> list[Member]:
    """The checkpoints loaded; those of an ensemble must predict the same classes."""
    members = [Member(Path(path), *load_checkpoint(Path(path))) for path in checkpoints]
    first = members[0].meta
    for member in members[1:]:
        meta = member.meta
        if (meta.task, meta.classes, meta.positive_indices) != (
            first.task,
            first.classes,
            first.positive_indices,
        ):
            raise UserError(
                f"{member.path} predicts {meta.classes} ({meta.task}), {members[0].path} predicts "
                f"{first.classes} ({first.task}): an ensemble's members must predict the same classes"
            )
    return members


def resolve_data(text: str, image_size: int, cache: Path) -> tuple[str, Path, int | None, str | None]:
    """(display name, prepared folder, fold or None, source or None) for a DATA argument; a raw
    source is prepared into `cache` (once)."""
    path, fold, source = check_data(text)
    if (path / MANIFEST).exists():
        return text, path, fold, source
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    prepared = cache / f"{path.name}-{image_size}px-{digest}"
    prepare_once(path, prepared, image_size, every_class_in_every_fold=False)  # only scored
    return text, prepared, None, None


def diagnosis_with_intervals(scored: Scored, resamples: int, seed: int) -> dict[str, dict]:
    """The diagnosis metrics of `scored` (`diagnosis_metrics`): {metric: {"value", "low", "high"}}."""
    found = with_intervals(scored.diagnoses, scored.probabilities, scored.classes, resamples, seed)
    names = [name for name in found if not name.endswith(("_low", "_high"))]
    return {
        name: {"value": found[name], "low": found[f"{name}_low"], "high": found[f"{name}_high"]}
        for name in names
    }


def metrics_with_intervals(
    scored: Scored, threshold: float, targets: Targets, resamples: int, seed: int
) -> dict[str, dict]:
    """{"threshold_free" | "at_0.5" | "at_threshold": {metric: {"value", "low", "high"}}}."""
    groups = {
        "threshold_free": lambda y, s: threshold_free(y, s, targets),
        "at_0.5": lambda y, s: at_threshold(y, s, 0.5),
        "at_threshold": lambda y, s: at_threshold(y, s, threshold),
    }
    result = {}
    for group, statistic in groups.items():
        point = statistic(scored.labels, scored.scores)
        intervals = bootstrap(scored.labels, scored.scores, statistic, resamples, seed)
        result[group] = {
            k: {"value": v, "low": intervals[k][0], "high": intervals[k][1]} for k, v in point.items()
        }
    return result


def evaluate_checkpoints(
    checkpoints: list[Path], data: list[str], threshold_from: str | None, options: Options, cache: Path
) -> tuple[dict, list[Scored]]:
    """Score one checkpoint, or an ensemble of several, on every DATA with the threshold chosen on
    `threshold_from` (or the stored one: the mean of the members'); return the summary (metrics
    with intervals, per dataset: an ensemble's, then each member's) and the predictions."""
    members = load_members(checkpoints)
    several = len(members) > 1

    def scored_on(text: str) -> list[Scored]:
        """The ensemble's scores of DATA `text` first, then each member's (one model: its own)."""
        found = []
        for number, member in enumerate(members, start=1):
            name, prepared, fold, source = resolve_data(text, member.meta.image_size, cache)
            label = f"{name} · member {number}" if several else name
            found.append(score(member.model, member.meta, label, prepared, fold, options.tta, source))
        return [ensemble_of(f"{text} · ensemble", found), *found] if several else found

    scored = [entry for text in data for entry in scored_on(text)]
    if threshold_from:
        known = {s.name: s for s in scored}
        val = (
            known.get(f"{threshold_from} · ensemble" if several else threshold_from)
            or scored_on(threshold_from)[0]
        )
        try:
            threshold = choose_threshold(
                val.labels, val.scores, options.threshold, options.target_sensitivity
            )
        except NoThreshold as err:
            raise UserError(
                f"cannot choose a threshold on {threshold_from}: {err}; choose it on data with both "
                "classes, or leave out --threshold-from to use the checkpoint's own"
            ) from None
        rule = (
            "Youden's J"
            if options.threshold == "youden"
            else f"sensitivity >= {options.target_sensitivity:g}"
        )
        origin = f"chosen on {threshold_from} ({rule})"
    elif several:
        threshold = float(np.mean([member.meta.threshold for member in members]))
        origin = "the mean of the members' stored thresholds (each Youden's J on its own validation fold)"
    else:
        threshold = float(members[0].meta.threshold)
        origin = "stored in the checkpoint (Youden's J on its validation fold)"
    resamples, seed = options.bootstrap, options.seed
    summary = {
        "checkpoint": ", ".join(str(path) for path in checkpoints),
        "backbone": ", ".join(dict.fromkeys(member.meta.backbone for member in members)),
        "members": [
            {"checkpoint": str(m.path), "backbone": m.meta.backbone, "threshold": m.meta.threshold}
            for m in members
        ],
        "threshold": threshold,
        "threshold_origin": origin,
        "tta": options.tta,
        "bootstrap": resamples,
        "targets": options.targets.__dict__,
        "datasets": {s.name: {"images": len(s.labels), "malignant": int(s.labels.sum())} for s in scored},
        "metrics": {
            s.name: metrics_with_intervals(s, threshold, options.targets, resamples, seed) for s in scored
        },
    }
    diagnosed = [s for s in scored if s.diagnoses is not None]
    if diagnosed:
        summary["classes"] = diagnosed[0].classes
        summary["diagnosis"] = {s.name: diagnosis_with_intervals(s, resamples, seed) for s in diagnosed}
        summary["confusion"] = {
            s.name: confusion_matrix(s.diagnoses, s.probabilities).tolist() for s in diagnosed
        }
    return summary, scored


def split_arguments(
    arguments: list[str], what: str = "PREPARED[@FOLD] or raw images"
) -> tuple[list[str], list[str]]:
    """(checkpoints, the rest) of a command line: the leading arguments that are checkpoints (a
    folder holding meta.json, or a URI), then `what` the command takes."""
    count = 0
    while count < len(arguments) and (
        is_remote(arguments[count]) or Path(arguments[count], META_FILE).is_file()
    ):
        count += 1
    checkpoints, data = arguments[:count], arguments[count:]
    missing = [item for item in data if not Path(item.partition("@")[0]).exists()]
    if checkpoints and missing:
        raise UserError(
            f"data not found: {missing[0]} (nor is it a checkpoint, a folder holding {META_FILE}); "
            f"give the checkpoints first, then {what}"
        )
    if not checkpoints:
        raise UserError(
            f"{arguments[0]} is not a checkpoint (a folder holding {META_FILE}, or its s3:// / gs:// URI); "
            "give the checkpoints first, then the data"
        )
    if not data:
        raise UserError(f"nothing after the checkpoints: give the checkpoints, then {what}")
    return checkpoints, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "arguments",
        nargs="+",
        metavar="CHECKPOINT... DATA",
        help="one checkpoint folder (model.safetensors + meta.json) or URI, or several (an ensemble); "
        "then PREPARED, PREPARED@FOLD, PREPARED@SOURCE, PREPARED@FOLD,SOURCE or raw images",
    )
    parser.add_argument("--threshold-from", metavar="VAL_DATA", help="choose the threshold on this data")
    parser.add_argument("--threshold", choices=THRESHOLD_METHODS, default=Options.threshold)
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=Options.target_sensitivity,
        help="for --threshold sensitivity",
    )
    parser.add_argument("--fixed-specificity", type=float, default=Targets.fixed_specificity)
    parser.add_argument("--fixed-sensitivity", type=float, default=Targets.fixed_sensitivity)
    parser.add_argument("--tta", action="store_true", help="average over flips and 90-degree rotations")
    parser.add_argument(
        "--bootstrap", type=int, default=Options.bootstrap, help="resamples for the 95%% intervals"
    )
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--cache", type=Path, default=Path("prepared"), help="where raw DATA is prepared")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<checkpoint>-<time>)")
    args = parser.parse_args(argv)

    from orchestrator.evaluation.report import write_report

    options = Options(
        args.threshold,
        args.target_sensitivity,
        Targets(args.fixed_specificity, args.fixed_sensitivity),
        args.tta,
        args.bootstrap,
        args.seed,
    )
    given, data = split_arguments(args.arguments)
    checkpoints = [local_copy(c, staging_dir("checkpoints")) for c in given]  # s3://... downloaded once
    summary, scored = evaluate_checkpoints(checkpoints, data, args.threshold_from, options, args.cache)
    name = checkpoints[0].name if len(checkpoints) == 1 else f"ensemble-of-{len(checkpoints)}"
    out = args.out or Path("reports") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    html = write_report(out, summary, scored)
    print(f"report: {html}")
    print((out / "report.md").read_text())
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
