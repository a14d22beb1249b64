"""Shortcut audit: how well can the label be predicted from what is NOT the lesion?

    isic-shortcuts PREPARED [--backbone efficientnet_lite0] [--weights package]
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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.data.dataset_format import SHARDS, read_manifest
from orchestrator.errors import UserError, command
from orchestrator.tables import to_markdown
from trainables.backbones import create_backbone, input_config
from trainables.metrics import bootstrap, roc_auc
from trainables.precision import Normalize, in_layout
from trainables.transforms import decode_jpeg

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
class Audited:
    """What the audit keeps per image (not the pixels): labels, folds, sources, the trivial
    statistics and each view's frozen features; and a few examples of each class for the picture."""

    labels: np.ndarray
    folds: np.ndarray
    sources: np.ndarray
    trivial: np.ndarray  # log original width and height (when recorded), mean R, G, B, brightness, contrast
    features: dict[str, np.ndarray]
    examples: np.ndarray  # uint8 N x S x S x 3, benign then malignant
    example_labels: np.ndarray
    example_sources: np.ndarray


def _batches(prepared: Path, batch_size: int = 64):
    """Record batches of the shards, with the columns the audit reads (older datasets lack some)."""
    import pyarrow.dataset as pads

    dataset = pads.dataset(Path(prepared) / SHARDS, format="parquet")
    optional = [c for c in ("source", "width", "height") if c in dataset.schema.names]
    yield from dataset.to_batches(columns=["image", "label", "fold", *optional], batch_size=batch_size)


def _square(images: list[np.ndarray], size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images])


def _trivial(images: list[np.ndarray], rows: dict) -> np.ndarray:
    stats = []
    for image in images:
        gray = image.mean(axis=2)
        stats.append([*image.reshape(-1, 3).mean(axis=0), gray.mean(), gray.std()])
    if "width" in rows:
        sizes = np.log(np.array([rows["width"], rows["height"]], dtype=np.float64).T)
        return np.hstack([sizes, np.asarray(stats)])
    return np.asarray(stats, dtype=np.float64)


def extract(
    prepared: Path, model: torch.nn.Module, normalize: Normalize, size: int, per_class: int = 3
) -> Audited:
    """One pass over the dataset, a batch at a time: every view's features and the statistics."""
    labels, folds, sources, trivial = [], [], [], []
    features: dict[str, list[np.ndarray]] = {"whole": [], "border": [], "centre": []}
    examples: dict[int, list[tuple[np.ndarray, str]]] = {0: [], 1: []}
    for batch in _batches(prepared):
        rows = batch.to_pydict()
        decoded = [decode_jpeg(data) for data in rows["image"]]
        pixels = _square(decoded, size)
        count = len(decoded)
        batch_sources = rows.get("source", ["?"] * count)
        for view, shown in (
            ("whole", pixels),
            ("border", border_only(pixels)),
            ("centre", centre_only(pixels)),
        ):
            features[view].append(_features(shown, model, normalize))
        trivial.append(_trivial(decoded, rows))
        labels += rows["label"]
        folds += rows["fold"]
        sources += batch_sources
        for image, label, source in zip(pixels, rows["label"], batch_sources, strict=True):
            if sum(shown == source for _, shown in examples[label]) < per_class:  # each source shown
                examples[label].append((image, source))
    chosen = examples[0] + examples[1]
    return Audited(
        np.asarray(labels),
        np.asarray(folds),
        np.asarray(sources),
        np.vstack(trivial),
        {view: np.concatenate(parts) for view, parts in features.items()},
        np.stack([image for image, _ in chosen]),
        np.array([0] * len(examples[0]) + [1] * len(examples[1])),
        np.array([source for _, source in chosen]),
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
def _features(pixels: np.ndarray, model: torch.nn.Module, normalize: Normalize) -> np.ndarray:
    """Pooled frozen features of uint8 NHWC images."""
    batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    return model.forward_head(model.forward_features(normalize(batch)), pre_logits=True).numpy()


def out_of_fold_scores(x: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """P(malignant) of every image from a logistic regression fitted on the other folds."""
    # imported here: a sweep imports this module, and audits only when asked to
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    return cross_val_predict(classifier, x, labels, cv=PredefinedSplit(folds), method="predict_proba")[:, 1]


def verdict(view: str, auc: float) -> str:
    if view in ("whole", "centre"):
        return "predicts the label (expected: the lesion is in view)" if auc >= WARN_AT else "weak signal"
    if auc >= WARN_AT:
        return "WARNING: the label is predictable without the lesion"
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
) -> tuple[dict, Audited]:
    """Every view's out-of-fold ROC-AUC with its interval and verdict, and what was audited."""
    manifest = read_manifest(prepared)
    size = size or manifest.image_size
    cfg = input_config(backbone)
    model = in_layout(create_backbone(backbone, weights, num_classes=2).eval())
    log.info("shortcut audit of %s: %s features at %d px", prepared, backbone, size)
    found = extract(prepared, model, Normalize(cfg.mean, cfg.std, torch.device("cpu")), size)
    if len(set(found.labels.tolist())) < 2:
        raise UserError(f"{prepared}: the shortcut audit needs both classes")
    inputs = {**found.features, "trivial": found.trivial}
    if len(set(found.sources.tolist())) > 1:
        inputs["source"] = (found.sources[:, None] == np.unique(found.sources)).astype(float)  # one-hot
    rows = {}
    for view, x in inputs.items():
        scores = out_of_fold_scores(x, found.labels, found.folds)
        auc = roc_auc(found.labels, scores)
        low, high = bootstrap(found.labels, scores, lambda y, s: {"auc": roc_auc(y, s)}, resamples, seed)[
            "auc"
        ]
        rows[view] = {
            "auc": auc,
            "low": low,
            "high": high,
            "what": DESCRIPTIONS[view],
            "verdict": verdict(view, auc),
        }
    result = {
        "prepared": str(prepared),
        "images": int(len(found.labels)),
        "malignant": int(found.labels.sum()),
        "per_source": {
            name: {
                "images": int((found.sources == name).sum()),
                "malignant": int(found.labels[found.sources == name].sum()),
            }
            for name in dict.fromkeys(found.sources.tolist())
        },
        "features": features_label(backbone, weights, size),
        "classifier": "standardised logistic regression (C=0.1), out-of-fold on the dataset's folds",
        "views": rows,
        "warnings": [view for view in NOT_LESION if view in rows and rows[view]["auc"] >= WARN_AT],
        "original_size_recorded": found.trivial.shape[1] == 7,
    }
    return result, found


def features_label(backbone: str, weights: str, size: int) -> str:
    return f"{backbone} ({weights} weights), {size} px, pooled"


def views_table(result: dict):
    """One row per view: what the classifier saw, its ROC-AUC with the interval, the verdict."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "view": view,
                "what the classifier sees": row["what"],
                "ROC-AUC [95% CI]": f"{row['auc']:.3f} [{row['low']:.3f}, {row['high']:.3f}]",
                "verdict": row["verdict"],
            }
            for view, row in result["views"].items()
        ]
    )


def headline(result: dict) -> str:
    if result["warnings"]:
        found = ", ".join(f"{v} {result['views'][v]['auc']:.2f}" for v in result["warnings"])
        return (
            f"SHORTCUT WARNING ({found}): the labels of this dataset can be predicted without the lesion. "
            "A model validated on it may score well by learning where images came from; hold a source "
            "out (data.val_source) or add sources whose classes are mixed."
        )
    return "No strong shortcut found: nothing but the lesion predicts the label at ROC-AUC >= 0.70."


def picture(found: Audited, path: Path) -> None:
    """Examples of each class as the `whole`, `border` and `centre` views see them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = {
        "whole": found.examples,
        "border": border_only(found.examples),
        "centre": centre_only(found.examples),
    }
    columns = len(found.examples)
    figure, axes = plt.subplots(3, columns, figsize=(1.8 * columns, 5.8), squeeze=False)
    for row, (view, pixels) in enumerate(views.items()):
        for column in range(columns):
            axis = axes[row][column]
            axis.imshow(pixels[column])
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                label = "malignant" if found.example_labels[column] else "benign"
                axis.set_title(f"{label}\n{found.example_sources[column]}", fontsize=8)
            if column == 0:
                axis.set_ylabel(view)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(result: dict, found: Audited, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / AUDIT_FILE).write_text(json.dumps(result, indent=2))
    picture(found, out / "shortcuts.png")
    table = to_markdown(views_table(result))
    text = f"# Shortcut audit of {result['prepared']}\n\n{headline(result)}\n\n{table}\n"
    text += f"\nFeatures: {result['features']}; {result['classifier']}.\n"
    (out / "shortcuts.md").write_text(text)
    return out / "shortcuts.md"


def audited(prepared: Path, out: Path) -> dict:
    """The audit of `prepared` with the default extractor, written to `out`. A prepared dataset never
    changes, so an audit kept in its `shortcuts/` folder (same extractor and size) is reused, and a
    new one is kept there when the folder can be written."""
    cached = Path(prepared) / "shortcuts"
    wanted = features_label("efficientnet_lite0", "package", read_manifest(prepared).image_size)
    if (cached / AUDIT_FILE).is_file() and json.loads((cached / AUDIT_FILE).read_text())[
        "features"
    ] == wanted:
        shutil.copytree(cached, out, dirs_exist_ok=True)
    else:
        result, found = audit(Path(prepared))
        write(result, found, out)
        try:
            write(result, found, cached)
        except OSError:
            log.info("%s cannot be written: the shortcut audit is kept in %s only", prepared, out)
    return json.loads((Path(out) / AUDIT_FILE).read_text())


def report_section(result: dict, folder: Path):
    """The audit as a section of the evaluation report."""
    from orchestrator.evaluation.report import Section

    caption = "What the whole, border and centre views see (benign and malignant examples)"
    return Section(
        "Shortcut audit of the training data",
        headline(result),
        views_table(result),
        folder / "shortcuts.png",
        caption,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-shortcuts", description=__doc__.split("\n\n")[0])
    parser.add_argument("prepared", type=Path, help="a dataset made by orchestrator.data.prepare")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="frozen feature extractor")
    parser.add_argument("--weights", default="package", help="its weights: package, file:PATH, hub")
    parser.add_argument("--size", type=int, help="pixels (default: the dataset's image size)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    parser.add_argument(
        "--out", type=Path, help="folder for shortcuts.json/.md/.png (default: PREPARED/shortcuts)"
    )
    args = parser.parse_args(argv)
    result, found = audit(args.prepared, args.backbone, args.weights, args.size, args.bootstrap)
    markdown = write(result, found, args.out or args.prepared / "shortcuts")
    print(markdown.read_text())
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
