"""Score a checkpoint on one fold of a prepared dataset, outside Ray, exactly as it was validated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch

from orchestrator.prepare import SHARDS
from orchestrator.presets import Preprocess
from trainables.checkpoint import load_checkpoint
from trainables.precision import Normalize
from trainables.train_loop import predict, validation_metrics


def fold_batches(prepared: Path, fold: int, preprocess: Preprocess, batch_size: int = 64) -> Iterator[dict]:
    dataset = pads.dataset(Path(prepared) / SHARDS, format="parquet")
    scanner = dataset.scanner(
        columns=["image", "label"], filter=pads.field("fold") == fold, batch_size=batch_size
    )
    for record_batch in scanner.to_batches():
        if record_batch.num_rows == 0:
            continue
        rows = record_batch.to_pydict()
        out = preprocess({"image": np.array(rows["image"], dtype=object), "label": np.array(rows["label"])})
        yield {"image": torch.from_numpy(out["image"]), "label": torch.from_numpy(out["label"])}


def evaluate_fold(checkpoint: Path, prepared: Path, fold: int) -> dict[str, float]:
    """Validation metrics of `checkpoint` on `fold` of `prepared`."""
    model, meta = load_checkpoint(Path(checkpoint))
    normalize = Normalize(meta["mean"], meta["std"], torch.device("cpu"))
    labels, scores = predict(model, fold_batches(prepared, fold, Preprocess(meta["image_size"])), normalize)
    return validation_metrics(labels, scores)
