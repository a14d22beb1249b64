"""Clinical evaluation of a checkpoint: metrics with bootstrap intervals, a decision threshold
chosen on validation data, pictures and a report to open in a browser.

    isic-evaluate CHECKPOINT DATA [DATA ...] [--threshold-from VAL_DATA] [--tta]
        [--threshold youden|sensitivity] [--target-sensitivity 0.9] [--bootstrap 1000] [--out DIR]

DATA is a prepared dataset, `PREPARED@FOLD` for one of its folds, `PREPARED@SOURCE` for one of its
sources, `PREPARED@FOLD,SOURCE` for both, or raw images (a folder per class or an ISIC layout),
prepared on the fly at the checkpoint's input size. Several DATA are
reported side by side (say, the internal validation fold and an external set). The threshold is
chosen on VAL_DATA and applied unchanged to every DATA; without --threshold-from it is the one the
checkpoint stored, chosen on its own validation fold.
"""

from __future__ import annotations

import argparse
import hashlib
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
from orchestrator.storage import local_copy, staging_dir
from trainables.checkpoint import CheckpointMeta, load_checkpoint
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


@dataclass
class Scored:
    """One dataset's predictions."""

    name: str
    image_ids: list[str]
    labels: np.ndarray
    scores: np.ndarray


def fold_batches(
    prepared: Path,
    fold: int | None,
    preprocess: Preprocess,
    batch_size: int = BATCH,
    ids: list | None = None,
    source: str | None = None,
) -> Iterator[dict]:
    """uint8 image batches of `prepared` (one fold and/or one source, or all of it); image ids are
    appended to `ids`."""
    dataset = pads.dataset(Path(prepared) / SHARDS, format="parquet")
    where = pads.field("fold") == fold if fold is not None else None
    if source is not None:
        same_source = pads.field("source") == source
        where = same_source if where is None else where & same_source
    scanner = dataset.scanner(columns=["image_id", "image", "label"], filter=where, batch_size=batch_size)
    for record_batch in scanner.to_batches():
        if record_batch.num_rows == 0:
            continue
        rows = record_batch.to_pydict()
        if ids is not None:
            ids.extend(rows["image_id"])
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
    batches = fold_batches(prepared, fold, preprocess_for(meta), ids=ids, source=source)
    labels, probabilities = predict(model, batches, normalize_for(meta), tta=tta)
    if len(labels) == 0:
        raise UserError(f"{name}: no images to evaluate")
    # the data's labels are benign (0) or malignant (1), whatever classes the model has
    return Scored(name, ids, labels, malignant_probability(probabilities, meta.positive_indices))


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


def evaluate_checkpoint(
    checkpoint: Path, data: list[str], threshold_from: str | None, options: Options, cache: Path
) -> tuple[dict, list[Scored]]:
    """Score `checkpoint` on every DATA with the threshold chosen on `threshold_from` (or the stored
    one); return the summary (metrics with intervals, per dataset) and the predictions."""
    model, meta = load_checkpoint(Path(checkpoint))

    def scored_on(text: str) -> Scored:
        name, prepared, fold, source = resolve_data(text, meta.image_size, cache)
        return score(model, meta, name, prepared, fold, options.tta, source)

    scored = [scored_on(text) for text in data]
    if threshold_from:
        known = {s.name: s for s in scored}
        val = known.get(threshold_from) or scored_on(threshold_from)
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
    else:
        threshold = float(meta.threshold)
        origin = "stored in the checkpoint (Youden's J on its validation fold)"
    summary = {
        "checkpoint": str(checkpoint),
        "backbone": meta.backbone,
        "threshold": threshold,
        "threshold_origin": origin,
        "tta": options.tta,
        "bootstrap": options.bootstrap,
        "targets": options.targets.__dict__,
        "datasets": {s.name: {"images": len(s.labels), "malignant": int(s.labels.sum())} for s in scored},
        "metrics": {
            s.name: metrics_with_intervals(s, threshold, options.targets, options.bootstrap, options.seed)
            for s in scored
        },
    }
    return summary, scored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint folder (model.safetensors + meta.json), or its URI")
    parser.add_argument(
        "data", nargs="+", help="PREPARED, PREPARED@FOLD, PREPARED@SOURCE, PREPARED@FOLD,SOURCE or raw images"
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
    checkpoint = local_copy(args.checkpoint, staging_dir("checkpoints"))  # s3://... downloaded once
    summary, scored = evaluate_checkpoint(checkpoint, args.data, args.threshold_from, options, args.cache)
    out = args.out or Path("reports") / f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    html = write_report(out, summary, scored)
    print(f"report: {html}")
    print((out / "report.md").read_text())
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
