"""The Ray Data pipeline: prepared Parquet -> (oversample) -> decode + augment -> Train workers."""

from __future__ import annotations

from pathlib import Path

import ray.data

from orchestrator.data.dataset_format import SHARDS, Manifest, read_manifest
from trainables.transforms import Oversample, Preprocess

READ_COLUMNS = ["image_id", "label", "fold", "image"]


def train_class_counts(
    manifest: Manifest, val_fold: int, test_fold: int | None = None, val_source: str = ""
) -> dict[int, int]:
    """Images per class label in the training data: every fold but `val_fold` and `test_fold`, or,
    with `val_source`, every other source (its folds but `test_fold`)."""
    counts = dict.fromkeys(range(len(manifest.classes)), 0)
    if val_source:
        parts = [
            (fold, per_class)
            for source, folds in manifest.counts.per_source_fold.items()
            if source != val_source
            for fold, per_class in folds.items()
        ]
    else:
        parts = list(manifest.counts.per_fold.items())
    for fold, per_class in parts:
        if int(fold) in (val_fold, test_fold):
            continue
        for label, name in enumerate(manifest.classes):
            counts[label] += per_class[name]
    return counts


def oversample_factors(counts: dict[int, int]) -> dict[int, float]:
    """How many copies of each image per epoch bring every class up to the largest one."""
    largest = max(counts.values())
    return {label: largest / n for label, n in counts.items() if n > 0}


def class_weights(counts: dict[int, int]) -> list[float]:
    """Loss weight per class label, inversely proportional to its frequency (mean weight 1 per image)."""
    total = sum(counts.values())
    return [total / (len(counts) * counts[label]) if counts[label] else 0.0 for label in sorted(counts)]


def configure_data_context() -> None:
    """Quiet, ordered execution. One progress bar per dataset per epoch per trial drowns Tune's own
    status table; keeping block order makes a seeded run repeatable (shuffling is done, seeded, by
    the train loop's local shuffle buffer)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True


def build_datasets(
    prepared: str | Path,
    val_fold: int,
    size: int,
    augment: str,
    balance: str,
    seed: int = 0,
    test_fold: int | None = None,
    manifest: Manifest | None = None,
    val_source: str = "",
    color: str = "none",
) -> dict[str, ray.data.Dataset]:
    """The `train` and `val` datasets for one trial; `val` is never augmented nor balanced, and the
    test fold is in neither. With `val_source`, `val` is that whole source and `train` every other
    one (leave-one-source-out). `prepared` is a local folder or a URI (`s3://...`); with a URI, pass
    its `manifest` (read by the driver)."""
    configure_data_context()
    prepared = str(prepared).rstrip("/")
    manifest = manifest if manifest is not None else read_manifest(Path(prepared))
    columns = READ_COLUMNS + (["source"] if val_source else [])
    rows = ray.data.read_parquet(f"{prepared}/{SHARDS}", columns=columns)
    held_out = f" and fold != {test_fold}" if test_fold is not None else ""
    if val_source:
        train = rows.filter(expr=f"source != '{val_source}'{held_out}")
        val = rows.filter(expr=f"source == '{val_source}'")
    else:
        train = rows.filter(expr=f"fold != {val_fold}{held_out}")
        val = rows.filter(expr=f"fold == {val_fold}")
    if balance == "oversample":
        factors = oversample_factors(train_class_counts(manifest, val_fold, test_fold, val_source))
        train = train.map_batches(Oversample(factors, seed), batch_format="pyarrow")
    train = train.map_batches(Preprocess(size, augment, seed, color), batch_format="numpy")
    val = val.map_batches(Preprocess(size, color=color), batch_format="numpy")
    return {"train": train, "val": val}
