"""Does ASHA pay? The same grid run to the end (FIFO) and under the sweep's ASHA: the share of the
full grid's epochs ASHA trained, and whether it picked the same winner.

    python benchmarks/asha_pays.py [--source ../shared/data/kaggle-isic-224/train | --prepared DIR]
        [--backbone tf_efficientnet_lite0] [--weights package] [--image-size 128] [--epochs 6]
        [--lr 3e-3 1e-3 3e-4] [--optimizer adamw sgd] [--batch-size 32 64] [--out result.json]

Both sweeps train the same grid (default: 3 learning rates x 2 optimizers x 2 batch sizes = 12
configurations) on the same prepared data, fold 0 validating, with the spec's defaults otherwise:
ASHA on val_auc, grace period 1 epoch, reduction factor 2, trials as many at once as the machine
fits. A winner is the leaderboard's first row; its AUC is the best validation AUC of its kept
checkpoints. The bar: ASHA trains <= 40% of the full grid's epochs and its winner is within 0.01
AUC of the full grid's. `--image-size` is the size prepared and trained (a `--prepared` set is
resized to it). The last line is the verdict.

The default grid is hours on a 2-CPU machine (12 x 6 epochs of 2100 images); on one GPU, minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import ray

from orchestrator.config import PROJECT_ROOT, parse_spec
from orchestrator.data.prepare import prepare
from orchestrator.driver import LOCAL_RAY_ENV, concurrent_trials, run_sweep

KAGGLE = PROJECT_ROOT.parent / "shared" / "data" / "kaggle-isic-224" / "train"
CONFIG_COLUMNS = ["backbone", "lr", "optimizer", "batch_size"]


def sweep(args: argparse.Namespace, prepared: Path, scheduler: str, storage: Path) -> dict:
    """One sweep of the grid; its trials' epochs and its winner."""
    spec = parse_spec(
        {
            "name": f"asha-pays-{scheduler}",
            "data": {"prepared": str(prepared), "val_fold": 0, "image_size": args.image_size},
            "search": {
                "backbone": args.backbone,
                "lr": args.lr,
                "optimizer": args.optimizer,
                "batch_size": args.batch_size,
            },
            "train": {"epochs": args.epochs, "weights": args.weights},
            "scheduler": {"type": scheduler},
            "storage": str(storage),
        }
    )
    started = time.perf_counter()
    _, frame = run_sweep(spec)
    seconds = time.perf_counter() - started
    finished = ["completed"] if scheduler == "fifo" else ["completed", "stopped early"]
    failed = frame[~frame["status"].isin(finished)]
    if len(failed):
        raise SystemExit(f"{scheduler}: {len(failed)} trials did not finish:\n{failed.to_string()}")
    winner = frame.iloc[0]
    return {
        "trials": len(frame),
        # trials at once: their order decides what ASHA can compare, so the share depends on it
        "concurrent_trials": concurrent_trials(spec),
        "seconds": round(seconds),
        "epochs": int(frame["epochs_run"].sum()),
        "epochs_by_trial": {_label(row): int(row["epochs_run"]) for _, row in frame.iterrows()},
        "winner": _label(winner),
        "winner_val_auc": float(winner["best_val_auc"]),
        "val_auc_by_trial": {_label(row): float(row["best_val_auc"]) for _, row in frame.iterrows()},
    }


def _label(row) -> str:
    return " ".join(f"{column}={row[column]}" for column in CONFIG_COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=KAGGLE, help="images to prepare")
    parser.add_argument("--prepared", type=Path, help="an already prepared dataset (skips --source)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="package")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3, 1e-3, 3e-4])
    parser.add_argument("--optimizer", nargs="+", default=["adamw", "sgd"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if len(args.lr) * len(args.optimizer) * len(args.batch_size) < 12:
        parser.error("the grid needs at least 12 configurations")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        prepared = args.prepared
        if prepared is None:
            if not args.source.is_dir():
                parser.error(f"{args.source} not found: give --source or --prepared")
            prepared = root / "prepared"
            prepare(args.source, prepared, args.image_size, 5, 0)
        os.environ.update(LOCAL_RAY_ENV)  # Ray's processes inherit it
        ray.init(address="local", configure_logging=False)
        try:
            full = sweep(args, prepared, "fifo", root / "runs")
            asha = sweep(args, prepared, "asha", root / "runs")
        finally:
            ray.shutdown()
    share = asha["epochs"] / full["epochs"]
    delivered_gap = full["winner_val_auc"] - asha["winner_val_auc"]  # the model ASHA hands over
    config_gap = full["winner_val_auc"] - full["val_auc_by_trial"][asha["winner"]]  # its config, run out
    meets_bar = share <= 0.4 and abs(delivered_gap) <= 0.01
    result = {
        "full_grid": full,
        "asha": asha,
        "epochs_share": round(share, 3),
        "same_winner": asha["winner"] == full["winner"],
        "asha_winner_val_auc_below_full_winner": round(delivered_gap, 4),
        "asha_winner_config_run_out_below_full_winner": round(config_gap, 4),
        "meets_bar": meets_bar,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    for name, run in (("full grid", full), ("ASHA", asha)):
        print(f"{name}: {run['epochs']} epochs, winner {run['winner']} (val AUC {run['winner_val_auc']:.4f})")
    print(f"ASHA's winner: {delivered_gap:.4f} AUC below the full grid's winner ({config_gap:.4f} run out)")
    at_once = asha["concurrent_trials"]
    print(f"share of the full grid's epochs ASHA trained: {share:.3f}, {at_once} trials at once")
    print(f"bar (<= 0.40 of the epochs, winner within 0.01 AUC): {'met' if meets_bar else 'NOT met'}")


if __name__ == "__main__":
    main()
