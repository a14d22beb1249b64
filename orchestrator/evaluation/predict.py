"""P(malignant) and the decision for images, with a checkpoint's stored threshold.

    isic-predict CHECKPOINT IMAGES... [--out predictions.csv] [--threshold T] [--tta]

IMAGES are files or folders (searched recursively for images). Unreadable files are listed in the
output with their reason and do not stop the run.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from orchestrator.data.decode import try_load
from orchestrator.data.sources import IMAGE_SUFFIXES
from orchestrator.errors import UserError, run_cli
from orchestrator.evaluation.evaluate import FlipRotateAverage
from orchestrator.storage import local_copy, staging_dir
from trainables.checkpoint import load_checkpoint
from trainables.precision import Normalize
from trainables.transforms import Preprocess

BATCH = 32


def image_paths(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            paths.append(path)
        else:
            raise UserError(f"not found: {path}")
    if not paths:
        raise UserError(f"no images found in {', '.join(items)}")
    return paths


def batches(
    paths: list[Path], size: int, failures: dict[Path, str], color: str = "none"
) -> Iterator[tuple[int, list[Path], dict]]:
    """(files looked at, files read, their uint8 batch); files that cannot be read go to `failures`."""
    preprocess = Preprocess(size, color=color)
    for start in range(0, len(paths), BATCH):
        good, jpegs = [], []
        for path in paths[start : start + BATCH]:
            loaded = try_load(path, size)
            if isinstance(loaded, str):
                failures[path] = loaded
            else:
                jpegs.append(loaded.jpeg)
                good.append(path)
        out = (
            preprocess({"image": np.array(jpegs, dtype=object), "label": np.zeros(len(good))}) if good else {}
        )
        yield len(paths[start : start + BATCH]), good, out


@torch.no_grad()
def predict_paths(checkpoint: Path, paths: list[Path], tta: bool = False, progress: bool = True):
    """[(path, P(malignant))], {path: reason} for unreadable files, and the checkpoint's meta."""
    model, meta = load_checkpoint(checkpoint)
    scorer = FlipRotateAverage(model) if tta else model
    normalize = Normalize(meta["mean"], meta["std"], torch.device("cpu"))
    failures: dict[Path, str] = {}
    results = []
    with tqdm(total=len(paths), unit="img", disable=not progress, desc="predict") as bar:
        for seen, good, batch in batches(paths, meta["image_size"], failures, meta.get("color", "none")):
            if good:
                logits = scorer(normalize(torch.from_numpy(batch["image"])))
                results += zip(good, torch.softmax(logits.float(), 1)[:, -1].tolist(), strict=True)
            bar.update(seen)
    return results, failures, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint folder, or its s3:// / gs:// URI")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    parser.add_argument("--tta", action="store_true", help="average over flips and 90-degree rotations")
    args = parser.parse_args(argv)
    paths = image_paths(args.images)
    checkpoint = local_copy(args.checkpoint, staging_dir("checkpoints"))
    results, failures, meta = predict_paths(checkpoint, paths, args.tta)
    threshold = args.threshold if args.threshold is not None else float(meta.get("threshold", 0.5))
    positive = meta["classes"][-1]
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", f"p_{positive}", "decision", "threshold", "error"])
        for path, probability in results:
            decision = positive if probability >= threshold else meta["classes"][0]
            writer.writerow([path, f"{probability:.6f}", decision, f"{threshold:.6f}", ""])
        for path, reason in failures.items():
            writer.writerow([path, "", "", "", reason])
    flagged = sum(p >= threshold for _, p in results)
    print(
        f"{len(results)} images scored, {flagged} called {positive} at threshold {threshold:.4f}: {args.out}"
    )
    if failures:
        print(
            f"{len(failures)} unreadable, listed in {args.out}: "
            + ", ".join(str(p) for p in list(failures)[:5])
        )
    return 0


def cli() -> None:
    """The `isic-predict` command."""
    run_cli(main)


if __name__ == "__main__":
    cli()
