"""Where a trial's training images/s go: one epoch of a trial's train dataset through growing
stages, in one process, on a GPU when there is one.

    python benchmarks/pipeline_stages.py [--backbone resnet50] [--batch-size 128] [--copies 32]

1. `data`: the trial's train dataset as the sweep builds it (rows held in the object store,
   oversampled, decoded and augmented by Ray Data), batches as NumPy.
2. `iterator`: + the train loop's batch iterator: torch tensors on the device, through the local
   shuffle buffer.
3. `train`: + the train step of `gpu_throughput.py` (same model, precision and layout as a trial).
4. `train, prefetch N`: stage 3 with N batches prefetched instead of Ray's default of one.
5. `data, any order`: stage 1 with Ray Data free to hand out blocks as they finish (the sweep
   keeps their order, for repeatable runs).
Each stage runs `--epochs` epochs and reports its last (the first starts Ray Data's workers). The
bundled sample is prepared at the backbone's size and repeated `--copies` times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import ray
import torch
from gpu_throughput import TrainStep, device_for_run, replicated_sample, sync

from orchestrator.data.dataset_format import SHARDS, read_manifest
from orchestrator.data.pipeline import build_datasets, shared_rows
from trainables.backbones import input_config
from trainables.train_loop import SHUFFLE_BUFFER

DTYPES = {"image": torch.uint8, "label": torch.int64}


def timed_epochs(epochs: int, batches: Callable[[], Iterable], consume: Callable, device) -> float:
    """Images/s of the last of `epochs` passes over `batches()`, each batch given to `consume`."""
    for _ in range(epochs):
        images, started = 0, time.perf_counter()
        for batch in batches():
            consume(batch)
            images += len(batch["label"])
        sync(device)
        rate = images / (time.perf_counter() - started)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--copies", type=int, default=32, help="times the 300-image sample is repeated")
    parser.add_argument("--image-size", type=int, help="pixels; default: the backbone's own")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4)
    args = parser.parse_args()
    size = args.image_size or input_config(args.backbone).input_size
    device, bs = device_for_run(), args.batch_size
    ray.init(address="local", configure_logging=False)
    with tempfile.TemporaryDirectory() as folder:
        prepared = replicated_sample(size, args.copies, Path(folder))
        shard_bytes = sum(path.stat().st_size for path in (prepared / SHARDS).glob("*.parquet"))
        rows = shared_rows(str(prepared), False, shard_bytes)
        manifest = read_manifest(prepared)
        source = rows if rows is not None else prepared
        train = build_datasets(source, 0, size, "standard", "oversample", manifest=manifest)["train"]
        step = TrainStep(args.backbone, device)

        def no_op(batch: dict) -> None:
            pass

        def through_step(batch: dict) -> None:
            step(batch["image"], batch["label"])

        def torch_batches(prefetch: int = 1) -> Iterable:
            return train.iter_torch_batches(
                batch_size=bs,
                dtypes=DTYPES,
                device=device,
                local_shuffle_buffer_size=SHUFFLE_BUFFER,
                prefetch_batches=prefetch,
            )

        stages = {
            "data": (lambda: train.iter_batches(batch_size=bs, batch_format="numpy"), no_op),
            "iterator": (torch_batches, no_op),
            "train": (torch_batches, through_step),
            f"train, prefetch {args.prefetch}": (lambda: torch_batches(args.prefetch), through_step),
        }
        rates = {}
        for name, (batches, consume) in [*stages.items(), ("data, any order", stages["data"])]:
            if name == "data, any order":  # last: datasets built from the same rows share this setting
                train.context.execution_options.preserve_order = False
            rates[name] = round(timed_epochs(args.epochs, batches, consume, device), 1)
            print(f"{name}: {rates[name]} images/s", flush=True)
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(json.dumps({"card": card, "backbone": args.backbone, "size": size, "batch_size": bs, **rates}))
    print(f"ratio (train / data alone): {rates['train'] / rates['data']:.3f}")


if __name__ == "__main__":
    main()
