"""P(malignant) and the decision for images, with a checkpoint's stored threshold; several
checkpoints are an ensemble (their class probabilities and stored thresholds averaged). A diagnosis
model's CSV also holds each class's probability and the most probable diagnosis.

    isic-predict CHECKPOINT [CHECKPOINT ...] IMAGES... [--out predictions.csv] [--threshold T] [--tta]

IMAGES are files or folders (searched recursively for images). Unreadable files are listed in the
output with their reason and do not stop the run.

Each image takes the path a prepared dataset's images took: `decode.try_load` (upright, shorter side
resized, stored as JPEG bytes), then the checkpoint's evaluation `Preprocess`. The model was
validated, and its threshold chosen, on pixels that went through that JPEG encode and decode; feeding
it the same pixels makes `isic-predict` give the P(malignant) that `isic-evaluate` gives for the same
image (a test holds them within 1e-5), where handing undecoded pixels to the transform would shift
scores by the JPEG error near the threshold. The extra encode of a small image is cheap beside the
forward pass.
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
from orchestrator.errors import UserError, command
from orchestrator.evaluation.evaluate import (
    Member,
    load_members,
    normalize_for,
    preprocess_for,
    split_arguments,
)
from orchestrator.storage import local_copy, staging_dir
from trainables.inference import malignant_probability, predict
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
    paths: list[Path], size: int, preprocess: Preprocess, failures: dict[Path, str]
) -> Iterator[tuple[int, list[Path], dict]]:
    """(files looked at, files read, their uint8 batch or None); files that cannot be read go to
    `failures`. Each file is loaded as prepare stores it (`size` is the checkpoint's input size)."""
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        good, jpegs = [], []
        for path in chunk:
            loaded = try_load(path, size)
            if isinstance(loaded, str):
                failures[path] = loaded
            else:
                jpegs.append(loaded.jpeg)
                good.append(path)
        if not good:
            yield len(chunk), good, None
            continue
        out = preprocess({"image": np.array(jpegs, dtype=object), "label": np.zeros(len(good), np.int64)})
        yield len(chunk), good, {key: torch.from_numpy(out[key]) for key in ("image", "label")}


def predict_paths(
    checkpoints: list[Path], paths: list[Path], tta: bool = False, progress: bool = True
) -> tuple[dict[Path, np.ndarray], dict[Path, str], list[Member]]:
    """{path: class probabilities} (several checkpoints: their mean), {path: reason} for unreadable
    files, and the checkpoints loaded."""
    members = load_members(checkpoints)
    failures: dict[Path, str] = {}
    found: dict[Path, np.ndarray] = {}
    for number, member in enumerate(members, start=1):
        meta, normalize = member.meta, normalize_for(member.meta)
        desc = f"predict ({number}/{len(members)})" if len(members) > 1 else "predict"
        with tqdm(total=len(paths), unit="img", disable=not progress, desc=desc) as bar:
            for seen, good, batch in batches(paths, meta.image_size, preprocess_for(meta), failures):
                if batch is not None:
                    _, probabilities = predict(member.model, [batch], normalize, tta=tta)
                    for path, row in zip(good, probabilities, strict=True):
                        found[path] = found.get(path, 0) + row / len(members)
                bar.update(seen)
    return found, failures, members


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "arguments",
        nargs="+",
        metavar="CHECKPOINT... IMAGES",
        help="a checkpoint folder or its s3:// / gs:// URI, or several (an ensemble); then images or folders",
    )
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument(
        "--threshold", type=float, help="decision threshold (default: the checkpoint's, or the members' mean)"
    )
    parser.add_argument("--tta", action="store_true", help="average over flips and 90-degree rotations")
    args = parser.parse_args(argv)
    given, images = split_arguments(args.arguments, "image files or folders")
    paths = image_paths(images)
    checkpoints = [local_copy(c, staging_dir("checkpoints")) for c in given]
    found, failures, members = predict_paths(checkpoints, paths, args.tta)
    meta = members[0].meta
    stored = float(np.mean([member.meta.threshold for member in members]))
    threshold = args.threshold if args.threshold is not None else stored
    positive = meta.positive_class
    classes = list(meta.classes) if meta.task == "diagnosis" else []  # their probabilities too
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        extra = [f"p_{name}" for name in classes] + (["diagnosis"] if classes else [])
        writer.writerow(["path", f"p_{positive}", "decision", "threshold", *extra, "error"])
        scores = malignant_probability(
            np.array(list(found.values())).reshape(len(found), len(meta.classes)), meta.positive_indices
        )
        for (path, probabilities), probability in zip(found.items(), scores.tolist(), strict=True):
            decision = positive if probability >= threshold else meta.negative_class
            row = [path, f"{probability:.6f}", decision, f"{threshold:.6f}"]
            if classes:  # a diagnosis model: each class's probability and the most probable one
                row += [f"{p:.6f}" for p in probabilities] + [classes[int(np.argmax(probabilities))]]
            writer.writerow([*row, ""])
        for path, reason in failures.items():
            writer.writerow([path, "", "", "", *[""] * len(extra), reason])
    flagged = int((scores >= threshold).sum())
    print(f"{len(found)} images scored, {flagged} called {positive} at threshold {threshold:.4f}: {args.out}")
    if failures:
        print(
            f"{len(failures)} unreadable, listed in {args.out}: "
            + ", ".join(str(p) for p in list(failures)[:5])
        )
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
