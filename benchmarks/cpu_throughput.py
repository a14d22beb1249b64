"""Training images/s on CPU: a trial's epochs through the project path against a bare loop in one
process, same model, batch size, image size, augmentation and cores, one run, side by side.

    python benchmarks/cpu_throughput.py [--backbone mobilenetv2_100] [--image-size 160]
        [--batch-size 32] [--epochs 3] [--copies 4] [--cpus N] [--threads N] [--repeat 1]
        [--bare-malloc default|project] [--out result.json]

Both start from the bundled ISIC sample prepared at `--image-size` and repeated `--copies` times,
and train on every fold but fold 0 from random init, full fine-tuning, fp32.

Bare loop: the training images decoded once, before the clock starts. Each epoch augments them with
the training preset (`trainables/transforms.py`, seeded per batch) and trains on them in shuffled
batches, with as many torch threads as `--cpus` (default: this machine's); the time counts both.
Project path: `orchestrator.sweep` with one trial and the default resources on a local Ray instance
of `--cpus` CPUs: Ray Data decodes and augments, the trial's own process trains. Each figure is the
median of the epochs after the first (the first starts Ray Data's workers, and warms the bare loop's
allocator). The bare loop runs in a fresh process of its own, with this environment's glibc malloc
(as a script of the user's would) or, with `--bare-malloc project`, with the settings the project
gives Ray's processes (`driver.LOCAL_RAY_ENV`), which speed the bare loop up too. `--repeat N` runs
N rounds of both, the bare loop first in odd rounds and second in even ones (Ray is stopped while
the bare loop runs), and takes the median of the rounds' ratios: a shared machine's speed drifts by
several per cent within minutes, more than many changes worth measuring. The last line is the
ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from gpu_throughput import TrainStep, project_path, replicated_sample

from orchestrator.config import ResourcesSpec
from orchestrator.data.dataset_format import SHARDS
from orchestrator.driver import LOCAL_RAY_ENV
from trainables.transforms import batch_seed, decode_jpeg, train_transform

VAL_FOLD = 0  # the sweep's default validation fold
MALLOC_SETTINGS = ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")  # glibc reads them when a process starts


def decoded_train_images(prepared: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The training rows' images (HxWx3 uint8), labels and ids."""
    table = pq.read_table(prepared / SHARDS, columns=["image_id", "label", "fold", "image"])
    rows = table.filter(pc.not_equal(table["fold"], VAL_FOLD)).to_pydict()
    return [decode_jpeg(data) for data in rows["image"]], np.array(rows["label"]), np.array(rows["image_id"])


def bare_loop(args: argparse.Namespace, prepared: Path) -> list[float]:
    """Images/s of each epoch: augment the decoded images, train on them."""
    import cv2

    torch.set_num_threads(args.cpus)
    cv2.setNumThreads(1)  # as in Ray Data's tasks
    images, labels, ids = decoded_train_images(prepared)
    step = TrainStep(args.backbone, torch.device("cpu"))
    transform = train_transform("standard", args.image_size)
    rates = []
    for epoch in range(args.epochs):
        order = np.random.default_rng(epoch).permutation(len(images))
        started = time.perf_counter()
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            transform.set_random_seed(batch_seed(0, epoch, ids[batch]))
            pixels = np.stack([transform(image=images[i])["image"] for i in batch]).transpose(0, 3, 1, 2)
            step(torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(labels[batch]))
        rates.append(len(order) / (time.perf_counter() - started))
        print(f"bare loop epoch {epoch + 1}: {rates[-1]:.1f} images/s", flush=True)
    return rates


def one_round(args: argparse.Namespace, root: Path, prepared: Path, bare_first: bool) -> dict:
    """The bare loop and the project path (on a local Ray instance of its own), in either order:
    alternating the order between rounds cancels the machine's drift."""
    bare = bare_loop_alone(args, prepared) if bare_first else []
    torch.set_num_threads(1)  # the driver does not train
    with environment_with(LOCAL_RAY_ENV):  # Ray's processes inherit it
        ray.init(address="local", num_cpus=args.cpus, configure_logging=False)
        try:
            per_trial, _ = project_path(args, args.image_size, root, prepared)
        finally:
            ray.shutdown()
    if not bare_first:  # Ray's processes are gone (1 to 3 s) before the new process trains
        bare = bare_loop_alone(args, prepared)
    bare_rate, project_rate = statistics.median(bare[1:]), statistics.median(per_trial[0][1:])
    return {
        "order": "bare loop first" if bare_first else "project path first",
        "bare_images_per_s_by_epoch": [round(rate, 1) for rate in bare],
        "project_images_per_s_by_epoch": [round(rate, 1) for rate in per_trial[0]],
        "bare_images_per_s": round(bare_rate, 1),
        "project_images_per_s": round(project_rate, 1),
        "ratio": round(project_rate / bare_rate, 3),
    }


def bare_loop_alone(args: argparse.Namespace, prepared: Path) -> list[float]:
    """The bare loop in a fresh process: in one that has run a Ray session it trains 1 to 4% slower.
    `--bare-malloc project` starts it with the malloc settings of the project's Ray processes."""
    malloc = {name: LOCAL_RAY_ENV[name] for name in MALLOC_SETTINGS} if args.bare_malloc == "project" else {}
    spawn = multiprocessing.get_context("spawn")
    with environment_with(malloc), ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(bare_loop, args, prepared).result()


@contextmanager
def environment_with(settings: dict[str, str]) -> Iterator[None]:
    """This process's environment with `settings` added, for the processes started meanwhile; as it
    was afterwards, so that every bare loop starts in the environment the benchmark started in."""
    environment = dict(os.environ)
    os.environ.update(settings)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenetv2_100")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4, help="times the 300-image sample is repeated")
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--threads", type=int, help="the trial's torch threads (default: the spec's)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of both; the ratio is their median")
    parser.add_argument(
        "--bare-malloc",
        choices=("default", "project"),
        default="default",
        help="the bare loop's glibc malloc: this environment's, or the one the project sets for Ray's "
        "processes (driver.LOCAL_RAY_ENV)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: each figure leaves out the first epoch")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.trials = 1  # what project_path reads
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prepared = replicated_sample(args.image_size, args.copies, root / "data")
        rounds = []
        for number in range(args.repeat):
            (root / f"round-{number + 1}").mkdir()
            rounds.append(one_round(args, root / f"round-{number + 1}", prepared, number % 2 == 0))
            print(f"round {number + 1}/{args.repeat}: ratio {rounds[-1]['ratio']:.3f}", flush=True)
    ratios = [outcome["ratio"] for outcome in rounds]
    result = {
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
        "trial_torch_threads": ResourcesSpec(threads_per_worker=args.threads).torch_threads,
        "bare_malloc": args.bare_malloc,
        "rounds": rounds,
        "ratios": ratios,
        "ratio": round(statistics.median(ratios), 3),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.repeat > 1:
        print(f"ratios of the {args.repeat} rounds: {', '.join(f'{ratio:.3f}' for ratio in ratios)}")
    print(f"ratio (project path / bare loop): {result['ratio']:.3f}")


if __name__ == "__main__":
    main()
