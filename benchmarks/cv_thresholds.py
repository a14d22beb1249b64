"""Decision thresholds under k-fold cross-validation, chosen honestly: each fold's threshold is picked
on the other folds' validation predictions, then applied to it.

    python benchmarks/cv_thresholds.py RUN_DIR PREPARED [--target-sensitivity 0.9]

RUN_DIR is a sweep run with `data.val_fold: all`; each fold's best checkpoint scores its own
validation fold. Printed per fold: ROC-AUC; sensitivity and specificity at Youden's J picked on that
same fold (optimistic); and at Youden's J and at the target sensitivity picked on the other folds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.evaluation.clinical import Options
from orchestrator.evaluation.evaluate import score
from trainables.checkpoint import load_checkpoint
from trainables.metrics import at_threshold, choose_threshold, roc_auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--target-sensitivity", type=float, default=Options.target_sensitivity)
    args = parser.parse_args()
    board = pd.read_csv(args.run_dir / "leaderboard.csv").dropna(subset=["checkpoint"])
    folds = {}
    for row in board.itertuples():
        model, meta = load_checkpoint(Path(row.checkpoint))
        s = score(model, meta, f"fold {row.val_fold}", args.prepared, int(row.val_fold), tta=False)
        folds[int(row.val_fold)] = (s.labels, s.scores)
    rows = []
    for fold, (labels, scores) in sorted(folds.items()):
        others = [k for k in folds if k != fold]
        pooled_labels = np.concatenate([folds[k][0] for k in others])
        pooled_scores = np.concatenate([folds[k][1] for k in others])
        row = {"fold": fold, "images": len(labels), "roc_auc": roc_auc(labels, scores)}
        choices = {
            "same_fold_youden": choose_threshold(labels, scores, "youden"),
            "other_folds_youden": choose_threshold(pooled_labels, pooled_scores, "youden"),
            "other_folds_sens": choose_threshold(
                pooled_labels, pooled_scores, "sensitivity", args.target_sensitivity
            ),
        }
        for name, threshold in choices.items():
            point = at_threshold(labels, scores, threshold)
            row[f"{name}_threshold"] = threshold
            row[f"{name}_sensitivity"] = point["sensitivity"]
            row[f"{name}_specificity"] = point["specificity"]
        rows.append(row)
    table = pd.DataFrame(rows)
    summary = table.drop(columns=["fold", "images"]).agg(["mean", "std"])
    pd.set_option("display.width", 200)
    print(table.round(4).to_string(index=False))
    print()
    print(summary.round(4).T.to_string())


if __name__ == "__main__":
    main()
