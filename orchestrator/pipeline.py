"""The Ray Data pipeline: prepared Parquet -> (oversample) -> decode + augment -> Train workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.data

from orchestrator.prepare import SHARDS, read_manifest
from orchestrator.presets import Preprocess

READ_COLUMNS = ["label", "fold", "image"]


def train_class_counts(manifest: dict, val_fold: int) -> dict[int, int]:
    """Images per class label in the training folds (every fold but `val_fold`)."""
    counts: dict[int, int] = {}
    for fold, per_class in manifest["counts"]["per_fold"].items():
        if int(fold) == val_fold:
            continue
        for label, name in enumerate(manifest["classes"]):
            counts[label] = counts.get(label, 0) + per_class[name]
    return counts


def oversample_factors(counts: dict[int, int]) -> dict[int, float]:
    """How many copies of each image per epoch bring every class up to the largest one."""
    largest = max(counts.values())
    return {label: largest / n for label, n in counts.items() if n > 0}


class Oversample:
    """Repeat each row `factor` times on average: floor(factor) copies, plus one more with
    probability equal to the fraction, drawn afresh every epoch."""

    def __init__(self, factors: dict[int, float], seed: int | None = None) -> None:
        self.factors = factors
        self.rng = np.random.default_rng(seed)

    def __call__(self, table: pa.Table) -> pa.Table:
        labels = table.column("label").to_numpy()
        factor = np.array([self.factors.get(int(label), 1.0) for label in labels])
        copies = np.floor(factor).astype(np.int64)
        copies += self.rng.random(len(factor)) < (factor - copies)
        return table.take(pa.array(np.repeat(np.arange(len(labels)), copies)))


def quiet_progress() -> None:
    """One progress bar per dataset per epoch per trial drowns Tune's own status table."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def build_datasets(
    prepared: str | Path,
    val_fold: int,
    size: int,
    mean: tuple,
    std: tuple,
    augment: str,
    balance: str,
) -> dict[str, ray.data.Dataset]:
    """The `train` and `val` datasets for one trial; `val` is never augmented nor balanced."""
    quiet_progress()
    manifest = read_manifest(Path(prepared))
    rows = ray.data.read_parquet(str(Path(prepared) / SHARDS), columns=READ_COLUMNS)
    train = rows.filter(expr=f"fold != {val_fold}")
    val = rows.filter(expr=f"fold == {val_fold}")
    if balance == "oversample":
        factors = oversample_factors(train_class_counts(manifest, val_fold))
        train = train.map_batches(Oversample(factors), batch_format="pyarrow")
    train = train.map_batches(Preprocess(size, mean, std, augment), batch_format="numpy")
    val = val.map_batches(Preprocess(size, mean, std), batch_format="numpy")
    return {"train": train, "val": val}
