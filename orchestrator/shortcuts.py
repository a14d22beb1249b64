"""Shortcut audit: how well can the label be predicted from what is NOT the lesion?

    python -m orchestrator.shortcuts PREPARED [--backbone efficientnet_lite0] [--weights package]
        [--size 128] [--bootstrap 1000] [--out DIR]

A dataset whose classes come from different collections lets a model learn the collection (its
camera, its rulers and vignettes, its image size, its colour cast) instead of the lesion, and a
validation fold drawn from the same collections cannot tell. This audit fits a cross-validated
logistic regression (the dataset's own grouped folds) on frozen ImageNet features of

  whole    the whole image
  border   the image with its central region blanked: what surrounds the lesion
  centre   the central region only: mostly the lesion
  trivial  statistics that say nothing about a lesion: original width and height, mean colour per
           channel, brightness and contrast
  source   which collection the image came from (datasets with several sources)

and prints each out-of-fold ROC-AUC with its 95% bootstrap interval and a verdict. `border`,
`trivial` or `source` at ROC-AUC >= 0.70 is a warning: a model can score well here without looking
at the lesion. Writes `shortcuts.json`, `shortcuts.md` and `shortcuts.png` (what `border` and
`centre` see) to --out (default: PREPARED/shortcuts).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from orchestrator.clinical import bootstrap
from orchestrator.errors import UserError, run_cli
from orchestrator.prepare import SHARDS, read_manifest
from orchestrator.presets import decode_jpeg
from orchestrator.tables import to_markdown
from trainables.backbones import create_backbone, input_config
from trainables.metrics import roc_auc
from trainables.precision import Normalize

log = logging.getLogger(__name__)

WARN_AT = 0.70  # ROC-AUC from non-lesion information at which the audit warns
BLANK_SIDE = 0.70  # `border`: the central square of this share of each side is blanked
CENTRE_SIDE = 0.50  # `centre`: the central square of this share of each side, enlarged
BLANK_VALUE = 128  # mid-grey where the lesion was
NOT_LESION = ("border", "trivial", "source")
DESCRIPTIONS = {
    "whole": "the whole image",
    "border": f"border only (central {BLANK_SIDE:.0%} of each side blanked)",
    "centre": f"centre only (central {CENTRE_SIDE:.0%} of each side)",
    "trivial": "original size, mean colour, brightness, contrast",
    "source": "the source collection's name",
}
AUDIT_FILE = "shortcuts.json"


@dataclass
class Images:
    """The square uint8 images of a prepared dataset with their labels, folds and sources."""

    pixels: np.ndarray  # N x S x S x 3
    labels: np.ndarray
    folds: np.ndarray
    sources: np.ndarray
    sizes: np.ndarray | None  # N x 2 original (width, height), when the dataset recorded them
    stats: np.ndarray  # N x 5: mean R, G, B of the stored image, brightness, contrast


def load_images(prepared: Path, size: int) -> Images:
    import cv2

    available = set(pq.read_schema(next((Path(prepared) / SHARDS).glob("*.parquet"))).names)
    columns = ["image", "label", "fold"] + [c for c in ("source", "width", "height") if c in available]
    table = pq.read_table(Path(prepared) / SHARDS, columns=columns).to_pydict()
    pixels, stats = [], []
    for data in table["image"]:
        image = decode_jpeg(data)
        gray = image.mean(axis=2)
        stats.append([*image.reshape(-1, 3).mean(axis=0), gray.mean(), gray.std()])
        pixels.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
    count = len(table["label"])
    sizes = np.array([table["width"], table["height"]], dtype=np.float64).T if "width" in table else None
    return Images(
        np.stack(pixels),
        np.asarray(table["label"]),
        np.asarray(table["fold"]),
        np.asarray(table.get("source", ["?"] * count)),
        sizes,
        np.asarray(stats, dtype=np.float64),
    )


def border_only(pixels: np.ndarray) -> np.ndarray:
    side = pixels.shape[1]
    lo = round(side * (1 - BLANK_SIDE) / 2)
    out = pixels.copy()
    out[:, lo : side - lo, lo : side - lo] = BLANK_VALUE
    return out


def centre_only(pixels: np.ndarray) -> np.ndarray:
    import cv2

    side = pixels.shape[1]
    lo = round(side * (1 - CENTRE_SIDE) / 2)
    return np.stack([cv2.resize(p[lo : side - lo, lo : side - lo], (side, side)) for p in pixels])


@torch.no_grad()
def features(pixels: np.ndarray, model: torch.nn.Module, normalize: Normalize, batch: int = 64) -> np.ndarray:
    """Pooled frozen features of uint8 NHWC images."""
    out = []
    for start in range(0, len(pixels), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch].transpose(0, 3, 1, 2)))
        out.append(model.forward_head(model.forward_features(normalize(chunk)), pre_logits=True).numpy())
    return np.concatenate(out)


def out_of_fold_scores(x: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """P(malignant) of every image from a logistic regression fitted on the other folds."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    return cross_val_predict(classifier, x, labels, cv=PredefinedSplit(folds), method="predict_proba")[:, 1]


def verdict(view: str, auc: float) -> str:
    if view in ("whole", "centre"):
        return "the lesion (and what it shows) predicts the label" if auc >= WARN_AT else "weak signal"
    if auc >= WARN_AT:
        return f"WARNING: the label is predictable without the lesion ({DESCRIPTIONS[view]})"
    if auc >= 0.6:
        return "some signal without the lesion: watch it"
    return "little signal without the lesion"


def audit(
    prepared: Path,
    backbone: str = "efficientnet_lite0",
    weights: str = "package",
    size: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict, Images]:
    """Every view's out-of-fold ROC-AUC with its interval and verdict, and the images audited."""
    manifest = read_manifest(prepared)
    size = size or manifest["image_size"]
    images = load_images(prepared, size)
    if len(set(images.labels.tolist())) < 2:
        raise UserError(f"{prepared}: the shortcut audit needs both classes")
    cfg = input_config(backbone)
    model = create_backbone(backbone, weights, num_classes=2).eval()
    normalize = Normalize(cfg.mean, cfg.std, torch.device("cpu"))
    inputs: dict[str, np.ndarray] = {}
    for view, pixels in (
        ("whole", images.pixels),
        ("border", border_only(images.pixels)),
        ("centre", centre_only(images.pixels)),
    ):
        log.info("shortcut audit: %s features of %d images", view, len(pixels))
        inputs[view] = features(pixels, model, normalize)
    trivial = images.stats if images.sizes is None else np.hstack([np.log(images.sizes), images.stats])
    inputs["trivial"] = trivial
    several = len(set(images.sources.tolist())) > 1
    if several:
        inputs["source"] = OneHotEncoder().fit_transform(images.sources.reshape(-1, 1)).toarray()
    rows = {}
    for view, x in inputs.items():
        scores = out_of_fold_scores(x, images.labels, images.folds)
        auc = roc_auc(images.labels, scores)
        low, high = bootstrap(images.labels, scores, lambda y, s: {"auc": roc_auc(y, s)}, resamples, seed)[
            "auc"
        ]
        rows[view] = {
            "auc": auc,
            "low": low,
            "high": high,
            "what": DESCRIPTIONS[view],
            "verdict": verdict(view, auc),
        }
    warnings = [view for view in NOT_LESION if view in rows and rows[view]["auc"] >= WARN_AT]
    result = {
        "prepared": str(prepared),
        "images": int(len(images.labels)),
        "malignant": int(images.labels.sum()),
        "per_source": {
            name: {
                "images": int((images.sources == name).sum()),
                "malignant": int(images.labels[images.sources == name].sum()),
            }
            for name in dict.fromkeys(images.sources.tolist())
        },
        "features": f"{backbone} ({weights} weights), {size} px, pooled",
        "classifier": "standardised logistic regression (C=0.1), out-of-fold on the dataset's folds",
        "views": rows,
        "warnings": warnings,
        "original_size_recorded": images.sizes is not None,
    }
    return result, images


def to_table(result: dict) -> str:
    import pandas as pd

    rows = [
        {
            "view": view,
            "what the classifier sees": row["what"],
            "ROC-AUC [95% CI]": f"{row['auc']:.3f} [{row['low']:.3f}, {row['high']:.3f}]",
            "verdict": row["verdict"],
        }
        for view, row in result["views"].items()
    ]
    return to_markdown(pd.DataFrame(rows))


def headline(result: dict) -> str:
    if result["warnings"]:
        found = ", ".join(f"{v} {result['views'][v]['auc']:.2f}" for v in result["warnings"])
        return (
            f"SHORTCUT WARNING ({found}): the labels of this dataset can be predicted without the lesion. "
            "A model validated on it may score well by learning where images came from; hold a source "
            "out (data.val_source) or add sources whose classes are mixed."
        )
    return "No strong shortcut found: nothing but the lesion predicts the label at ROC-AUC >= 0.70."


def picture(images: Images, path: Path, per_class: int = 3) -> None:
    """Examples of each class as the `whole`, `border` and `centre` views see them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [i for label in (0, 1) for i in np.flatnonzero(images.labels == label)[:per_class]]
    views = {"whole": images.pixels[chosen], "border": border_only(images.pixels[chosen])}
    views["centre"] = centre_only(images.pixels[chosen])
    figure, axes = plt.subplots(3, len(chosen), figsize=(1.8 * len(chosen), 5.8), squeeze=False)
    for row, (view, pixels) in enumerate(views.items()):
        for column, index in enumerate(chosen):
            axis = axes[row][column]
            axis.imshow(pixels[column])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                label = "malignant" if images.labels[index] else "benign"
                axis.set_title(f"{label}\n{images.sources[index]}", fontsize=8)
            if column == 0:
                axis.set_ylabel(view)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(result: dict, images: Images, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / AUDIT_FILE).write_text(json.dumps(result, indent=2))
    picture(images, out / "shortcuts.png")
    text = f"# Shortcut audit of {result['prepared']}\n\n{headline(result)}\n\n{to_table(result)}\n"
    text += f"\nFeatures: {result['features']}; {result['classifier']}.\n"
    (out / "shortcuts.md").write_text(text)
    return out / "shortcuts.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.shortcuts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("prepared", type=Path, help="a dataset made by orchestrator.prepare")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="frozen feature extractor")
    parser.add_argument("--weights", default="package", help="its weights: package, file:PATH, hub")
    parser.add_argument("--size", type=int, help="pixels (default: the dataset's image size)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    parser.add_argument(
        "--out", type=Path, help="folder for shortcuts.json/.md/.png (default: PREPARED/shortcuts)"
    )
    args = parser.parse_args(argv)
    result, images = audit(args.prepared, args.backbone, args.weights, args.size, args.bootstrap)
    markdown = write(result, images, args.out or args.prepared / "shortcuts")
    print(markdown.read_text())
    return 0


if __name__ == "__main__":
    run_cli(main)
