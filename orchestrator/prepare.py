"""Turn a folder-per-class image source into a prepared dataset, once.

Decoding multi-megapixel dermoscopy originals every epoch is the classic bottleneck, so each image
is decoded and resized here a single time (JPEG draft-mode decoding where it applies, EXIF
orientation applied) and stored as JPEG bytes with its label, id and fold in Parquet shards.
A `manifest.json` records classes, counts per fold and class, unreadable files and shard hashes.

    python -m orchestrator.prepare SOURCE --out DIR [--size 224] [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from orchestrator.errors import UserError, run_cli

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
POSITIVE_NAMES = ("malignant", "melanoma", "mel")  # the class a screening tool must not miss
MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT_VERSION = 1
JPEG_QUALITY = 95
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class SourceImage:
    path: Path
    image_id: str
    label: int


def class_names(root: Path) -> list[str]:
    """Sub-folders holding images, negative class first (benign before malignant)."""
    if not root.is_dir():
        raise UserError(f"data source not found or not a folder: {root}")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and any(_is_image(p) for p in d.iterdir()))
    if len(names) < 2:
        found = f"only '{names[0]}'" if names else "no class folder with images"
        raise UserError(
            f"no usable images in {root}: found {found}; expected one sub-folder per class "
            f"(e.g. benign/ and malignant/) holding {', '.join(sorted(IMAGE_SUFFIXES))} files"
        )
    positive = [n for n in names if n.lower() in POSITIVE_NAMES]
    return [n for n in names if n not in positive] + positive


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def scan_folder_per_class(root: Path) -> tuple[list[str], list[SourceImage]]:
    classes = class_names(root)
    images = [
        SourceImage(path, f"{name}/{path.stem}", label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if _is_image(path)
    ]
    return classes, images


def load_resized(path: Path, size: int) -> bytes:
    """JPEG bytes of the image at `path`, RGB, upright, shorter side at most `size` pixels.

    An upright RGB JPEG that is already small enough passes through byte for byte, which avoids
    a second lossy encode. Raises OSError / ValueError for files that cannot be decoded.
    """
    with Image.open(path) as image:
        small_enough = min(image.size) <= size
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, still >= size
        image.load()
        upright = image.getexif().get(EXIF_ORIENTATION, 1) == 1
        if image.format == "JPEG" and image.mode == "RGB" and upright and small_enough:
            return path.read_bytes()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    if min(rgb.size) > size:
        scale = size / min(rgb.size)
        target = (max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale)))
        rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _load_one(task: tuple[Path, int]) -> bytes | str:
    """Worker-process entry: the bytes, or the reason the file could not be read."""
    path, size = task
    try:
        return load_resized(path, size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"


def assign_folds(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified folds in which every group (an image, patient or lesion) stays in one fold."""
    counts = Counter(labels.tolist())
    if min(counts.values()) < folds:
        raise UserError(
            f"too few images for {folds} folds: class counts {dict(sorted(counts.items()))}; "
            "use fewer folds or add images"
        )
    fold = np.empty(len(labels), dtype=np.int8)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for index, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold[val] = index
    return fold


def prepare(
    source: Path,
    out: Path,
    image_size: int = 224,
    folds: int = 5,
    seed: int = 0,
    workers: int | None = None,
    shard_rows: int = 1024,
) -> dict:
    """Prepare `source` into `out` (written whole, or not at all) and return the manifest."""
    source, out = Path(source), Path(out)
    if (out / MANIFEST).exists():
        raise UserError(f"{out} already holds a prepared dataset; choose another --out or delete it")
    classes, images = scan_folder_per_class(source)
    log.info("preparing %d images of %s from %s at %d px", len(images), classes, source, image_size)
    workers = workers or os.cpu_count() or 1
    tasks = [(image.path, image_size) for image in images]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        progress = tqdm(
            pool.map(_load_one, tasks, chunksize=16), total=len(tasks), desc="prepare", unit="img"
        )
        loaded = list(progress)

    kept = [(img, data) for img, data in zip(images, loaded, strict=True) if isinstance(data, bytes)]
    unreadable = [
        {"path": str(img.path), "reason": data}
        for img, data in zip(images, loaded, strict=True)
        if isinstance(data, str)
    ]
    for bad in unreadable:
        log.warning("skipped unreadable image %s (%s)", bad["path"], bad["reason"])
    if not kept:
        raise UserError(f"none of the {len(images)} images in {source} could be decoded")

    labels = np.array([img.label for img, _ in kept])
    ids = np.array([img.image_id for img, _ in kept])
    fold = assign_folds(labels, ids, folds, seed)
    table = pa.table(
        {
            "image_id": pa.array(ids.tolist(), pa.string()),
            "label": pa.array(labels, pa.int64()),
            "fold": pa.array(fold, pa.int8()),
            "image": pa.array([data for _, data in kept], pa.binary()),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = _write(table, staging, shard_rows)
        manifest.update(
            format_version=FORMAT_VERSION,
            source=str(source),
            layout="folder-per-class",
            classes=classes,
            positive_class=classes[-1],
            image_size=image_size,
            folds=folds,
            seed=seed,
            counts=_counts(labels, fold, classes),
            unreadable=unreadable,
        )
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            out.rmdir()  # only an empty folder gets here; a prepared one was refused above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("prepared %d images into %s (%d unreadable)", len(kept), out, len(unreadable))
    return manifest


def _write(table: pa.Table, folder: Path, shard_rows: int) -> dict:
    (folder / SHARDS).mkdir()
    shards = []
    for index, start in enumerate(range(0, table.num_rows, shard_rows)):
        name = f"{SHARDS}/part-{index:05d}.parquet"
        pq.write_table(table.slice(start, shard_rows), folder / name)
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        shards.append({"file": name, "rows": min(shard_rows, table.num_rows - start), "sha256": digest})
    return {"shards": shards}


def _counts(labels: np.ndarray, fold: np.ndarray, classes: list[str]) -> dict:
    per_fold = {
        str(f): {name: int(((fold == f) & (labels == i)).sum()) for i, name in enumerate(classes)}
        for f in sorted(set(fold.tolist()))
    }
    per_class = {name: int((labels == i).sum()) for i, name in enumerate(classes)}
    return {"total": int(len(labels)), "per_class": per_class, "per_fold": per_fold}


def read_manifest(prepared: Path) -> dict:
    path = Path(prepared) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{prepared} is not a prepared dataset (no {MANIFEST}); "
            f"make one with: python -m orchestrator.prepare SOURCE --out {prepared}"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{prepared} was prepared by an incompatible version; prepare it again")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.prepare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the prepared dataset to")
    parser.add_argument("--size", type=int, default=224, help="shorter side in pixels (default 224)")
    parser.add_argument("--folds", type=int, default=5, help="number of cross-validation folds")
    parser.add_argument("--seed", type=int, default=0, help="seed for the fold assignment")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    args = parser.parse_args(argv)
    manifest = prepare(args.source, args.out, args.size, args.folds, args.seed, args.workers)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "counts": manifest["counts"],
                "unreadable": len(manifest["unreadable"]),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
