"""What a sweep pays per trial beyond training: 8 tiny trials through `orchestrator.sweep` against a
plain loop doing the same 8 trainings in one process.

    python benchmarks/trial_overhead.py [--epochs 2] [--out result.json]

Both train timm's `test_efficientnet` (random init) at 64 px on the bundled ISIC sample, fold 0
validating, for the grid 2 learning rates x 2 optimizers x 2 batch sizes, with the same transforms
(decoded and augmented afresh every epoch), optimizer groups, loss and validation metrics.

Sweep: FIFO, one trial at a time, default resources; its trials mark their start and their optimizer
steps in a timing log (`trainables/timing.py`). Per trial: start -> first step, and last step -> the
next trial's start. Their sum is the trial's fixed cost: the gap between one trial's last step and
the next one's first. Plain loop: the time from a training's start to its first step. The last line
is the ratio of the sweep's wall time (Ray started, trials run, leaderboard written) to the loop's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
import torch.nn.functional as F

from orchestrator.config import PROJECT_ROOT, parse_spec
from orchestrator.data.dataset_format import SHARDS
from orchestrator.data.prepare import prepare
from orchestrator.driver import LOCAL_RAY_ENV, run_sweep
from trainables.backbones import create_backbone, input_config
from trainables.finetune import param_groups
from trainables.metrics import validation_metrics
from trainables.optimizers import build_optimizer
from trainables.precision import Normalize, in_layout
from trainables.timing import TIMING_LOG, read_marks
from trainables.transforms import Preprocess

BACKBONE, SIZE, VAL_FOLD = "test_efficientnet", 64, 0
GRID = {"lr": [1e-3, 1e-4], "optimizer": ["adam", "sgd"], "batch_size": [16, 32]}


def configurations() -> list[dict]:
    return [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]


def plain_loop(prepared: Path, epochs: int) -> dict:
    """The 8 trainings one after another in this process; seconds to each one's first step."""
    torch.set_num_threads(1)  # as a trial's worker: 1 CPU
    table = pq.read_table(prepared / SHARDS, columns=["image_id", "label", "fold", "image"])
    columns = {name: np.array(values, dtype=object) for name, values in table.to_pydict().items()}
    is_val = columns["fold"] == VAL_FOLD
    train = {name: values[~is_val] for name, values in columns.items()}
    val = {name: values[is_val] for name, values in columns.items()}
    cfg = input_config(BACKBONE)
    normalize = Normalize(cfg.mean, cfg.std, torch.device("cpu"))
    to_first_step, totals = [], []
    started_all = time.perf_counter()
    for config in configurations():
        started = time.perf_counter()
        first = None
        model = in_layout(create_backbone(BACKBONE, "none", num_classes=2))
        groups = param_groups(model, config["lr"], 0.0, 1.0)
        optimizer = build_optimizer(config["optimizer"], groups, config["lr"], 0.0)
        for epoch in range(epochs):
            model.train()
            images = Preprocess(SIZE, "standard", seed=epoch)(train)
            order = np.random.default_rng(epoch).permutation(len(images["label"]))
            for start in range(0, len(order), config["batch_size"]):
                batch = order[start : start + config["batch_size"]]
                logits = model(normalize(torch.from_numpy(images["image"][batch])))
                loss = F.cross_entropy(logits, torch.from_numpy(images["label"][batch]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                first = first if first is not None else time.perf_counter() - started
            model.eval()
            seen = Preprocess(SIZE)(val)
            with torch.no_grad():
                logits = model(normalize(torch.from_numpy(seen["image"])))
            validation_metrics(seen["label"], torch.softmax(logits, 1)[:, 1].numpy())
        to_first_step.append(first)
        totals.append(time.perf_counter() - started)
    wall = time.perf_counter() - started_all
    return {"wall_s": wall, "to_first_step_s": to_first_step, "training_s": totals}


def sweep(prepared: Path, epochs: int, root: Path) -> dict:
    """The same trainings as a sweep; the timing log's marks, per trial in the order they ran."""
    log = root / "timing.jsonl"
    spec = parse_spec(
        {
            "name": "trial-overhead",
            "data": {"prepared": str(prepared), "folds": 5, "val_fold": VAL_FOLD, "balance": "none"},
            "search": {"backbone": BACKBONE, **GRID},
            "train": {"epochs": epochs, "weights": "none", "warmup_epochs": 0},
            "scheduler": {"type": "fifo"},
            "resources": {"max_concurrent_trials": 1},
            "storage": str(root / "runs"),
        }
    )
    started = time.perf_counter()
    os.environ.update({**LOCAL_RAY_ENV, TIMING_LOG: str(log)})  # Ray's processes inherit them
    ray.init(address="local", configure_logging=False)
    try:
        run_sweep(spec)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - started
    trials = sorted(read_marks(log).values(), key=lambda events: min(events["trial_start"]))
    to_first = [min(t["first_step"]) - min(t["trial_start"]) for t in trials]
    to_next = [min(b["trial_start"]) - max(a["last_step"]) for a, b in itertools.pairwise(trials)]
    gaps = [min(b["first_step"]) - max(a["last_step"]) for a, b in itertools.pairwise(trials)]
    return {"wall_s": wall, "to_first_step_s": to_first, "last_step_to_next_start_s": to_next, "gap_s": gaps}


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prepared = root / "prepared"
        prepare(PROJECT_ROOT / "datasets" / "isic-sample", prepared, SIZE, 5, 0)
        plain = plain_loop(prepared, args.epochs)
        print(f"plain loop: {plain['wall_s']:.1f} s; to first step {summary(plain['to_first_step_s'])}")
        swept = sweep(prepared, args.epochs, root)
    print(f"sweep: {swept['wall_s']:.1f} s for {len(configurations())} trials")
    print(f"  trial start -> first step: {summary(swept['to_first_step_s'])}")
    print(f"  last step -> next trial's start: {summary(swept['last_step_to_next_start_s'])}")
    print(f"  fixed cost per trial (last step -> next first step): {summary(swept['gap_s'])}")
    if args.out:
        args.out.write_text(json.dumps({"plain": plain, "sweep": swept}, indent=2))
    print(f"ratio sweep / plain loop wall time: {swept['wall_s'] / plain['wall_s']:.2f}")


if __name__ == "__main__":
    main()
