"""Does the embedded default show what pretraining buys? `python -m orchestrator.sweep` run with
`--seeds` different seeds: in each, the best pretrained configuration's validation ROC-AUC against
the best random-init one's.

    python benchmarks/demo_honest.py [--seeds 1 2 3 4 5] [--spec experiments/default.yaml] [--out result.json]

Each run is the real command line, as a user runs it, with `--set data.seed=S --set train.seed=S`:
the seed draws the folds (so the validation fold's images), the initial weights of the new layers,
the augmentation and the oversampling. A configuration's score is the best validation AUC of its
kept checkpoints (the leaderboard's `best_val_auc`). The bar: pretrained wins in at least 4 of 5
runs. The last line is the count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RANDOM_INIT = "none (random init)"


def run_once(spec: Path, seed: int, storage: Path) -> dict:
    """One sweep with `seed`; the best pretrained and random-init rows of its leaderboard."""
    command = [sys.executable, "-m", "orchestrator.sweep", str(spec), "--storage", str(storage)]
    command += ["--set", f"data.seed={seed}", "--set", f"train.seed={seed}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: the sweep failed\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (run,) = storage.glob("*/leaderboard.csv")
    frame = pd.read_csv(run)
    random_init = frame["weights"] == RANDOM_INIT
    if random_init.all() or not random_init.any():
        raise SystemExit("the spec must hold both pretrained and random-init configurations")

    def best(rows: pd.DataFrame) -> dict:
        row = rows.sort_values("best_val_auc", ascending=False).iloc[0]
        shown = {key: row[key] for key in ("backbone", "lr", "optimizer") if key in row}
        return {**shown, "auc": round(float(row["best_val_auc"]), 4)}

    pretrained, scratch = best(frame[~random_init]), best(frame[random_init])
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "pretrained": pretrained,
        "random_init": scratch,
        "pretrained_wins": pretrained["auc"] > scratch["auc"],
    }


def describe(best: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in best.items() if key != "auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--spec", type=Path, default=ROOT / "experiments" / "default.yaml")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as folder:
            runs.append(run_once(args.spec.resolve(), seed, Path(folder)))
        last = runs[-1]
        pretrained, scratch = last["pretrained"], last["random_init"]
        print(
            f"seed {seed}: pretrained {pretrained['auc']:.4f} ({describe(pretrained)}) vs random init "
            f"{scratch['auc']:.4f} ({describe(scratch)}); {last['seconds']} s",
            flush=True,
        )
    wins = sum(run["pretrained_wins"] for run in runs)
    if args.out:
        args.out.write_text(json.dumps({"runs": runs, "wins": wins}, indent=2))
    print(f"pretrained beats random init in {wins} of {len(runs)} runs")


if __name__ == "__main__":
    main()
