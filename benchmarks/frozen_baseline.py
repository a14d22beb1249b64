"""The baseline fine-tuning must beat: frozen ImageNet features + logistic regression, per fold.

    python benchmarks/frozen_baseline.py PREPARED [--weights file:PATH] [--backbone mobilenetv2]

Pooled features of the pretrained backbone (no augmentation, native size), a standardised
logistic regression fitted on four folds and scored (ROC-AUC) on the fifth, for every fold of a
dataset made by `orchestrator.data.prepare` (the same grouped folds the sweep uses).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from orchestrator.data.dataset_format import SHARDS, read_manifest
from trainables.backbones import create_backbone, input_config
from trainables.metrics import roc_auc
from trainables.precision import Normalize, in_layout
from trainables.transforms import Preprocess


@torch.no_grad()
def features(prepared: Path, backbone: str, weights: str, size: int | None = None, batch_size: int = 64):
    cfg = input_config(backbone)
    model = in_layout(create_backbone(backbone, weights, num_classes=None).eval())
    normalize, preprocess = (
        Normalize(cfg.mean, cfg.std, torch.device("cpu")),
        Preprocess(size or cfg.input_size),
    )
    table = pq.read_table(prepared / SHARDS, columns=["image", "label", "fold"])
    images = table.column("image").to_pylist()
    out = []
    for start in range(0, len(images), batch_size):
        batch = preprocess({"image": images[start : start + batch_size], "label": np.zeros(1)})
        pixels = normalize(torch.from_numpy(batch["image"]))
        out.append(model.forward_head(model.forward_features(pixels), pre_logits=True).numpy())
    return np.concatenate(out), table.column("label").to_numpy(), table.column("fold").to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--weights", default="file:../shared/weights/mobilenetv2_100.safetensors")
    parser.add_argument("--size", type=int, help="input size (default: the backbone's own)")
    args = parser.parse_args()
    started = time.perf_counter()
    x, y, folds = features(args.prepared, args.backbone, args.weights, args.size)
    print(f"features {x.shape} in {time.perf_counter() - started:.0f} s")
    aucs = []
    for fold in range(read_manifest(args.prepared).folds):
        train, val = folds != fold, folds == fold
        classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
        classifier.fit(x[train], y[train])
        aucs.append(roc_auc(y[val], classifier.predict_proba(x[val])[:, 1]))
        print(f"fold {fold}: val ROC-AUC {aucs[-1]:.4f} ({int(val.sum())} images)")
    mean, std = np.mean(aucs), np.std(aucs, ddof=1)
    print(f"frozen {args.backbone} + logistic regression: AUC {mean:.4f} +- {std:.4f} (mean +- sd)")


if __name__ == "__main__":
    main()
