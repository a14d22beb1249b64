"""The Ray Data pipeline: prepared Parquet -> (oversample) -> decode + augment -> Train workers."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.dataset import MaterializedDataset

from orchestrator.data.dataset_format import SHARDS, Manifest, read_manifest, task_labels
from trainables.errors import UserError
from trainables.storage import is_remote
from trainables.transforms import LabelByDiagnosis, Oversample, Preprocess, restart_epochs

log = logging.getLogger(__name__)

Split = tuple[int, str]  # (val_fold, val_source) of a validation split
HeldSplit = tuple[MaterializedDataset, MaterializedDataset]  # its (train, val) rows

READ_COLUMNS = ["image_id", "label", "fold", "image"]
# a sweep holds the prepared rows in Ray's object store when they take at most this share of it, and
# then its validation splits, cut, instead of the rows when they all fit in this share too
SHARED_ROWS_SHARE = 0.25
# rows per block, so per decode + augment task: a prepared shard is read as one block (several
# small shards too), and one block is decoded by one task on one core while the others wait
ROWS_PER_BLOCK = 64


def train_class_counts(
    manifest: Manifest,
    val_fold: int,
    test_fold: int | None = None,
    val_source: str = "",
    task: str = "binary",
) -> dict[int, int]:
    """Images per class label of `task` in the training data: every fold but `val_fold` and
    `test_fold`, or, with `val_source`, every other source (its folds but `test_fold`)."""
    labels = task_labels(manifest, task, "the prepared dataset")
    counts = dict.fromkeys(range(len(labels.classes)), 0)
    if val_source:
        parts = [
            (fold, per_class)
            for source, folds in labels.counts.per_source_fold.items()
            if source != val_source
            for fold, per_class in folds.items()
        ]
    else:
        parts = list(labels.counts.per_fold.items())
    for fold, per_class in parts:
        if int(fold) in (val_fold, test_fold):
            continue
        for label, name in enumerate(labels.classes):
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


def read_rows(
    prepared: str | Path, with_source: bool = False, with_diagnosis: bool = False
) -> ray.data.Dataset:
    """The prepared dataset's rows, with the columns the pipeline uses (`source` and `diagnosis`
    on request)."""
    shards = f"{str(prepared).rstrip('/')}/{SHARDS}"
    return ray.data.read_parquet(shards).select_columns(row_columns(with_source, with_diagnosis))


def row_columns(with_source: bool, with_diagnosis: bool = False) -> list[str]:
    return READ_COLUMNS + (["source"] if with_source else []) + (["diagnosis"] if with_diagnosis else [])


def shared_rows(
    prepared: str, with_source: bool, shard_bytes: int, with_diagnosis: bool = False
) -> MaterializedDataset | None:
    """The rows every trial of a sweep starts from, read once into Ray's object store; None when
    they would take more than `SHARED_ROWS_SHARE` of the smallest node's store (each epoch then
    reads the files again). Reading Parquet is the costly part of a small dataset's epoch: every
    read lists the files and reads their footers in actors of its own, while a pass over rows in
    memory takes a fraction of a second. The rows stay in the store, and keep the node that holds
    them, as long as the process that read them holds them: a sweep's driver, until it exits."""
    capacity = store_capacity()
    if shard_bytes > SHARED_ROWS_SHARE * capacity:
        log.info(
            "the prepared shards (%.1f GB) are read from %s every epoch: holding them takes more than "
            "%d%% of a node's object store (%.1f GB)",
            shard_bytes / 1e9,
            prepared,
            SHARED_ROWS_SHARE * 100,
            capacity / 1e9,
        )
        return None
    configure_data_context()
    if is_remote(prepared):
        rows = read_rows(prepared, with_source, with_diagnosis).materialize()
    else:  # read here and put in the store: Ray Data's read tasks take 2 to 4 s to start
        columns = row_columns(with_source, with_diagnosis)
        rows = ray.data.from_arrow([pq.read_table(shard, columns=columns) for shard in shard_files(prepared)])
    restart_epochs(rows)  # the trials' first epoch is epoch 0, as when they read the files
    return rows


def store_capacity() -> int:
    """Bytes of the object store of the cluster's smallest live node."""
    stores = [node["Resources"].get("object_store_memory", 0) for node in ray.nodes() if node["Alive"]]
    return min(stores, default=0)


def held_splits(
    rows: ray.data.Dataset, splits: list[Split], test_fold: int | None, shard_bytes: int
) -> dict[Split, HeldSplit] | None:
    """Each validation split's (train, val) rows, filtered and cut into blocks once for the whole
    sweep, in Ray's object store; None when together they would take more than `SHARED_ROWS_SHARE`
    of the smallest node's store (a split takes at most the rows' `shard_bytes`). Without them,
    every epoch of every trial filters the rows and cuts them again: measured, a fifth of the CPU
    time of an epoch's data, half of that in the trial's own process, beside its training.
    `splits`: (val_fold, val_source) pairs, as `DataSpec.splits` lists them."""
    if len(splits) * shard_bytes > SHARED_ROWS_SHARE * store_capacity():
        log.info(
            "the %d validation splits are cut from the held rows every epoch: together they take "
            "more than %d%% of a node's object store",
            len(splits),
            SHARED_ROWS_SHARE * 100,
        )
        return None
    held = {}
    for val_fold, val_source in splits:
        train, val = split_rows(rows, val_fold, test_fold, val_source)
        held[(val_fold, val_source)] = (held_here(train), held_here(val))
    return held


def held_here(dataset: ray.data.Dataset) -> MaterializedDataset:
    """`dataset`'s blocks, each whole, put in the store by this process as `shared_rows` puts the
    rows: on this node, where a task's output would sit on the node that ran it (which an
    autoscaling cluster may take away, and the blocks with it)."""
    blocks = ray.data.from_arrow(ray.get(dataset.to_arrow_refs()))
    restart_epochs(blocks)  # the trials' first epoch is epoch 0
    return blocks


def shard_files(prepared: str | Path) -> list[Path]:
    """A local prepared folder's shards, in the order Ray Data reads them (sorted; names starting
    with '.' or '_', such as a copy's `._part-00000.parquet`, left out)."""
    shards = sorted(
        path for path in Path(prepared, SHARDS).glob("*.parquet") if not path.name.startswith((".", "_"))
    )
    if not shards:
        raise UserError(f"no prepared shards in {Path(prepared, SHARDS)}: prepare the data again")
    return shards


def build_datasets(
    prepared: str | Path | ray.data.Dataset | HeldSplit,
    val_fold: int,
    size: int,
    augment: str,
    balance: str,
    seed: int = 0,
    test_fold: int | None = None,
    manifest: Manifest | None = None,
    val_source: str = "",
    color: str = "none",
    task: str = "binary",
) -> dict[str, ray.data.Dataset]:
    """The `train` and `val` datasets for one trial; `val` is never augmented nor balanced, and the
    test fold is in neither. With `val_source`, `val` is that whole source and `train` every other
    one (leave-one-source-out). `prepared` is a local folder, a URI (`s3://...`), the rows that
    `shared_rows` read (with the `diagnosis` column for that `task`), or this split's rows that
    `held_splits` cut; with a URI, rows or a split, pass its `manifest` (read by the driver)."""
    configure_data_context()
    if isinstance(prepared, str | Path):
        manifest = manifest if manifest is not None else read_manifest(Path(prepared))
        prepared = read_rows(prepared, with_source=bool(val_source), with_diagnosis=task == "diagnosis")
    elif manifest is None:
        raise ValueError("build_datasets: rows come with their manifest")
    if isinstance(prepared, tuple):
        train, val = prepared
    else:
        train, val = split_rows(prepared, val_fold, test_fold, val_source)
    if task == "diagnosis":
        relabel = LabelByDiagnosis(task_labels(manifest, task, "the prepared dataset").classes)
        train, val = (split.map_batches(relabel, batch_format="pyarrow") for split in (train, val))
    if balance == "oversample":
        factors = oversample_factors(train_class_counts(manifest, val_fold, test_fold, val_source, task))
        train = train.map_batches(Oversample(factors, seed), batch_format="pyarrow")
    train = train.map_batches(Preprocess(size, augment, seed, color), batch_format="numpy")
    val = val.map_batches(Preprocess(size, color=color), batch_format="numpy")
    return {"train": train, "val": val}


def split_rows(
    rows: ray.data.Dataset, val_fold: int, test_fold: int | None = None, val_source: str = ""
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """The (train, val) rows of one validation split (see `build_datasets`), ROWS_PER_BLOCK a block."""
    held_out = f" and fold != {test_fold}" if test_fold is not None else ""
    if val_source:
        train = rows.filter(expr=f"source != '{val_source}'{held_out}")
        val = rows.filter(expr=f"source == '{val_source}'")
    else:
        train = rows.filter(expr=f"fold != {val_fold}{held_out}")
        val = rows.filter(expr=f"fold == {val_fold}")
    # exactly ROWS_PER_BLOCK rows a block (the last one fewer), whatever blocks the rows came in:
    # the seeded augmentation and oversampling draw per block, so rows held in memory and rows read
    # from the files (where Ray pushes the filter into the read) must be cut alike
    train, val = (
        split.repartition(target_num_rows_per_block=ROWS_PER_BLOCK, strict=True) for split in (train, val)
    )
    return train, val
