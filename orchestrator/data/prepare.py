"""Turn an image source (a folder per class, or an ISIC download) into a prepared dataset, once.

Decoding multi-megapixel dermoscopy originals every epoch is the classic bottleneck, so each image
is decoded and resized here a single time (`decode.py`), in parallel, and streamed as JPEG bytes
with its label, fold (`folds.py`) and metadata into Parquet shards. `manifest.json` records classes,
counts per fold and class, unreadable files, shard hashes and the duplicate audit (see `audit.py`);
`dataset_format.py` describes the result for its readers.

    isic-prepare SOURCE [NAME=SOURCE ...] --out DIR [--size 224] [--folds 5]
        [--seed 0] [--layout auto] [--malignant MEL,BCC] [--subfolder DIR] [--against PREPARED]

Several sources make one dataset with a `source` column: an image found in two sources (the
duplicate audit's clusters) is kept once, in the first source listed, and records the others in
`also_in`; folds are stratified by class and source, and grouped as for one source. Where every
image has a diagnosis (the ISIC layouts), the manifest lists the diagnosis classes too
(`diagnoses.py`) and folds are stratified by them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from orchestrator.data.audit import HASH_SIDE, NEAR_DUPLICATE_BITS, clusters, near_pairs
from orchestrator.data.dataset_format import (
    FORMAT_VERSION,
    MANIFEST,
    SHARD_SCHEMA,
    SHARDS,
    Manifest,
    read_manifest,
)
from orchestrator.data.decode import Loaded, try_load
from orchestrator.data.diagnoses import diagnoses_section, diagnosis_labels
from orchestrator.data.folds import assign_folds, fold_counts
from orchestrator.data.sources import (
    BINARY_CLASSES,
    LAYOUTS,
    META_FIELDS,
    Source,
    SourceImage,
    check_source_name,
    read_sources,
)
from orchestrator.errors import UserError, command

log = logging.getLogger(__name__)


def _load_one(task: tuple[Path, int]) -> Loaded | str:
    """Worker-process entry."""
    return try_load(*task)


@dataclass
class Record:
    """What is kept in memory per image while its pixels wait in a raw shard on disk."""

    image_id: str
    label: int
    sha256: str
    phash: bytes
    size: tuple[int, int]
    mode: str
    meta: dict[str, str]
    path: Path
    source: str


class ShardWriter:
    """Writes rows to numbered Parquet files `shard_rows` at a time, so memory stays flat."""

    def __init__(self, folder: Path, prefix: str, shard_rows: int) -> None:
        self.folder, self.prefix, self.shard_rows = folder, prefix, shard_rows
        self.rows: list[dict] = []
        self.files: list[dict] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        path = self.folder / f"{self.prefix}-{len(self.files):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(self.rows, schema=SHARD_SCHEMA), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.files.append(
            {"file": f"{path.parent.name}/{path.name}", "rows": len(self.rows), "sha256": digest}
        )
        self.rows = []


def _decode_all(
    images: list[tuple[str, SourceImage]], size: int, workers: int, raw: ShardWriter
) -> tuple[list[Record], list[dict]]:
    """Decode + resize (source name, image) pairs in parallel, streaming pixels to raw shards; keep
    only small records."""
    records, unreadable = [], []
    tasks = [(image.path, size) for _, image in images]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_load_one, tasks, chunksize=8)
        for (source, image), loaded in tqdm(
            zip(images, results, strict=True), total=len(tasks), desc="prepare", unit="img"
        ):
            if isinstance(loaded, str):
                log.warning("skipped unreadable image %s (%s)", image.path, loaded)
                unreadable.append({"path": str(image.path), "reason": loaded, "source": source})
                continue
            records.append(
                Record(
                    image.image_id,
                    image.label,
                    loaded.sha256,
                    loaded.phash,
                    loaded.size,
                    loaded.mode,
                    image.meta,
                    image.path,
                    source,
                )
            )
            raw.add(
                {
                    "image_id": image.image_id,
                    "label": image.label,
                    "fold": -1,
                    "sha256": loaded.sha256,
                    "phash": loaded.phash,
                    "source": source,
                    "also_in": "",
                    "width": loaded.size[0],
                    "height": loaded.size[1],
                    **{name: image.meta.get(name) for name in META_FIELDS},
                    "image": loaded.jpeg,
                }
            )
    raw.flush()
    return records, unreadable


def audit(records: list[Record], image_size: int) -> tuple[dict, np.ndarray]:
    """Exact and near duplicates, conversions and small images; and a group id per record that
    keeps every near-duplicate cluster inside one fold."""
    pairs = near_pairs([r.phash for r in records])
    groups = clusters(len(records), pairs + same_subject_pairs(records))
    by_content: dict[str, list[str]] = {}
    for record in records:
        by_content.setdefault(record.sha256, []).append(record.image_id)
    members: dict[int, list[str]] = {}
    for record, group in zip(records, groups.tolist(), strict=True):
        members.setdefault(group, []).append(record.image_id)
    report = {
        "perceptual_hash": f"DCT {HASH_SIDE}x{HASH_SIDE} bits of a 64x64 thumbnail",
        "near_duplicate_max_bits": NEAR_DUPLICATE_BITS,
        "exact_duplicates": [ids for ids in by_content.values() if len(ids) > 1],
        "near_duplicate_pairs": [
            [records[i].image_id, records[j].image_id, bits]
            for i, j, bits in sorted(pairs, key=lambda p: p[2])
        ],
        "near_duplicate_clusters": [ids for ids in members.values() if len(ids) > 1],
        "converted_to_rgb": dict(Counter(r.mode for r in records if r.mode != "RGB")),
        "smaller_than_image_size": [r.image_id for r in records if min(r.size) < image_size],
    }
    return report, groups


def same_subject_pairs(records: list[Record]) -> list[tuple[int, int, int]]:
    """Pairs linking images of one patient or one lesion, where the source says so (ids are a
    source's own: the same id in two sources is not the same patient)."""
    pairs = []
    for key in ("patient_id", "lesion_id"):
        first: dict[tuple[str, str], int] = {}
        for index, record in enumerate(records):
            value = record.meta.get(key)
            if value:
                pairs.append((first.setdefault((record.source, value), index), index, 0))
    return pairs


def duplicates_of_reference(records: list[Record], reference: Path) -> dict[int, tuple[str, int]]:
    """Record index -> (the reference image it duplicates, Hamming bits; 0 for the same file)."""
    read_manifest(reference)
    table = pq.read_table(Path(reference) / SHARDS, columns=["image_id", "sha256", "phash"]).to_pydict()
    exact = dict(zip(table["sha256"], table["image_id"], strict=True))
    found = {i: (exact[r.sha256], 0) for i, r in enumerate(records) if r.sha256 in exact}
    for i, j, bits in near_pairs([r.phash for r in records], table["phash"]):
        if i not in found or bits < found[i][1]:
            found[i] = (table["image_id"][j], bits)
    return found


def cross_source_duplicates(records: list[Record], groups: np.ndarray, order: list[str]) -> dict[int, str]:
    """Record index -> the source that keeps its image, for every copy of an image that another
    source also holds (a duplicate cluster spanning sources is kept in the first source of `order`)."""
    rank = {name: position for position, name in enumerate(order)}
    owner: dict[int, str] = {}
    for record, group in zip(records, groups.tolist(), strict=True):
        if group not in owner or rank[record.source] < rank[owner[group]]:
            owner[group] = record.source
    return {
        i: owner[group]
        for i, (record, group) in enumerate(zip(records, groups.tolist(), strict=True))
        if record.source != owner[group]
    }


def _also_in(records: list[Record], groups: np.ndarray, dropped: dict[int, str]) -> dict[int, str]:
    """Kept record index -> the other sources its duplicate cluster had copies in."""
    others: dict[int, set[str]] = {}
    for i in dropped:
        others.setdefault(int(groups[i]), set()).add(records[i].source)
    return {
        i: ",".join(sorted(others[int(group)]))
        for i, group in enumerate(groups.tolist())
        if i not in dropped and int(group) in others
    }


def prepare_once(source: Path | list[Source], out: Path, *args, **kwargs) -> Path:
    """`out`, prepared from `source` unless it already holds a prepared dataset (a cache entry);
    another process that prepares the same folder at the same time is no error."""
    if (out / MANIFEST).exists():
        log.info("using the prepared dataset %s", out)
        return out
    try:
        prepare(source, out, *args, **kwargs)
    except UserError:
        if not (out / MANIFEST).exists():
            raise
    return out


def prepare(
    source: Path | list[Source],
    out: Path,
    image_size: int = 224,
    folds: int = 5,
    seed: int = 0,
    workers: int | None = None,
    shard_rows: int = 512,
    against: Path | None = None,
    layout: str = "auto",
    malignant: frozenset[str] | None = None,
    subfolder: str | None = None,
    every_class_in_every_fold: bool = True,
) -> Manifest:
    """Prepare `source` (a folder, or a list of named sources) into `out` (written whole, or not at
    all) and return the manifest.

    With `against` (a prepared dataset), every image that duplicates one of the reference's is
    dropped and counted, so that `out` can serve as an external validation set for it. Data to
    train and validate on needs every class in every fold; a test set (`against`, or
    `every_class_in_every_fold=False`) does not.
    """
    out = Path(out)
    if isinstance(source, list):
        sources = source
    else:
        sources = [Source(Path(source).name, Path(source), layout, malignant, subfolder)]
    if (out / MANIFEST).exists():
        raise UserError(f"{out} already holds a prepared dataset; choose another --out or delete it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; choose another --out")
    if against is not None:
        read_manifest(against)
    read = read_sources(sources)
    several = len(sources) > 1
    classes = BINARY_CLASSES if several else read[0][1].classes
    images = [
        (src.name, replace(image, image_id=f"{src.name}/{image.image_id}") if several else image)
        for src, listing in read
        for image in listing.images
    ]
    names = ", ".join(f"{src.name} ({len(listing.images)})" for src, listing in read)
    log.info("preparing %d images of %s from %s at %d px", len(images), classes, names, image_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        raw = ShardWriter(staging / "raw", "raw", shard_rows)
        records, unreadable = _decode_all(images, image_size, workers or os.cpu_count() or 1, raw)
        if not records:
            raise UserError(f"none of the {len(images)} images in {names} could be decoded")
        report, groups = audit(records, image_size)
        across = cross_source_duplicates(records, groups, [src.name for src in sources])
        dropped = duplicates_of_reference(records, against) if against is not None else {}
        keep = np.array([i not in dropped and i not in across for i in range(len(records))])
        if not keep.any():
            raise UserError(
                f"every image of {names} is also in {against or 'another source'}: none is left to prepare"
            )
        labels = np.array([r.label for r in records])
        kept = [r for r, k in zip(records, keep, strict=True) if k]
        diagnoses = diagnosis_labels([r.meta.get("diagnosis") or "" for r in kept])
        fold = np.full(len(records), -1, dtype=np.int8)
        fold[keep] = assign_folds(
            labels[keep],
            groups[keep],
            folds,
            seed,
            _strata(kept, [src.name for src in sources], diagnoses),
            classes,
            every_class_in_every_fold and against is None,  # a test set's folds are never trained on
        )
        also_in = _also_in(records, groups, across)
        shards = _finalise(staging, raw.files, keep, fold, also_in, shard_rows)
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": str(sources[0].path) if not several else [str(src.path) for src in sources],
            "layout": read[0][1].layout if not several else [listing.layout for _, listing in read],
            "malignant": sources[0].describe()["malignant"] if not several else "per source",
            "sources": [
                {
                    **src.describe(),
                    "layout": listing.layout,
                    "images": len(listing.images),
                    "listed_without_image": len(listing.missing),
                }
                for src, listing in read
            ],
            "classes": classes,
            "positive_class": classes[-1],
            "image_size": image_size,
            "folds": folds,
            "seed": seed,
            "fold_groups": "near-duplicate clusters joined with patient and lesion ids"
            + (", stratified by diagnosis" if diagnoses else "")
            + (", stratified by class and source" if several else ""),
            "metadata_fields": [f for f in META_FIELDS if any(r.meta.get(f) for r in records)],
            "counts": fold_counts(labels[keep], fold[keep], classes, [r.source for r in kept]),
            "unreadable": unreadable,
            "audit": report,
            "shards": shards,
        }
        if diagnoses:
            kept_sources = [r.source for r in kept]
            manifest["diagnoses"] = diagnoses_section(*diagnoses, labels[keep], fold[keep], kept_sources)
        if several:
            manifest["cross_source_duplicates"] = _cross_source_report(records, groups, across)
        if against is not None:
            manifest["against"] = {
                "reference": str(against),
                "dropped": len(dropped),
                "duplicates": [
                    [records[i].image_id, ref, bits, str(records[i].path)]
                    for i, (ref, bits) in sorted(dropped.items())
                ],
            }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            if out.exists():
                out.rmdir()  # only an empty folder gets here; anything else was refused above
            staging.rename(out)
        except OSError:
            if not (out / MANIFEST).exists():
                raise
            raise UserError(f"{out} was written by another process while this one prepared it") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("prepared %d images into %s (%d unreadable)", int(keep.sum()), out, len(unreadable))
    return Manifest.model_validate(manifest)


def _strata(
    kept: list[Record], sources: list[str], diagnoses: tuple[list[str], np.ndarray] | None
) -> np.ndarray | None:
    """What folds are stratified by besides the label: the source, when there are several, and
    the diagnosis, when every image has one."""
    strata = np.zeros(len(kept), dtype=np.int64)
    if len(sources) > 1:
        strata += np.array([sources.index(r.source) for r in kept])
    if diagnoses:
        strata += diagnoses[1] * len(sources)
    return strata if len(sources) > 1 or diagnoses else None


def _cross_source_report(records: list[Record], groups: np.ndarray, across: dict[int, str]) -> dict:
    """What de-duplication across sources removed: per source, and the clusters whose copies
    disagree on the label (the copy kept decides)."""
    kept_label: dict[int, int] = {
        int(g): r.label
        for i, (r, g) in enumerate(zip(records, groups.tolist(), strict=True))
        if i not in across
    }
    conflicts = [records[i].image_id for i in across if records[i].label != kept_label[int(groups[i])]]
    return {
        "dropped": len(across),
        "dropped_per_source": dict(Counter(records[i].source for i in across)),
        "label_conflicts": conflicts,
        "dropped_images": [[records[i].image_id, kept_in] for i, kept_in in sorted(across.items())],
    }


def _finalise(
    staging: Path,
    raw_files: list[dict],
    keep: np.ndarray,
    fold: np.ndarray,
    also_in: dict[int, str],
    shard_rows: int,
) -> list[dict]:
    """Rewrite the raw shards one at a time with their folds, leaving out dropped rows."""
    writer = ShardWriter(staging / SHARDS, "part", shard_rows)
    offset = 0
    for raw in raw_files:
        table = pq.read_table(staging / raw["file"]).to_pylist()
        for row in table:
            if keep[offset]:
                writer.add({**row, "fold": int(fold[offset]), "also_in": also_in.get(offset, "")})
            offset += 1
        (staging / raw["file"]).unlink()
    writer.flush()
    (staging / "raw").rmdir()
    return writer.files


def summary(manifest: Manifest, out: Path) -> dict:
    """What a person reads after preparing: counts and the audit's findings."""
    found = manifest.audit
    result = {
        "out": str(out),
        "layout": manifest.layout,
        "counts": manifest.counts.model_dump(),
        "unreadable": len(manifest.unreadable),
        "exact_duplicate_groups": len(found.exact_duplicates),
        "near_duplicate_pairs": len(found.near_duplicate_pairs),
        "near_duplicate_clusters": len(found.near_duplicate_clusters),
        "images_in_clusters": sum(len(ids) for ids in found.near_duplicate_clusters),
        "converted_to_rgb": found.converted_to_rgb,
        "smaller_than_image_size": len(found.smaller_than_image_size),
    }
    if manifest.against is not None:
        result["dropped_as_duplicates_of_reference"] = manifest.against.dropped
    if manifest.cross_source_duplicates is not None:
        across = manifest.cross_source_duplicates
        result["per_source"] = manifest.counts.per_source
        result["dropped_as_duplicates_across_sources"] = across.dropped_per_source
        result["label_conflicts_across_sources"] = len(across.label_conflicts)
    return result


def parse_sources(items: list[str], layout: str, malignant: frozenset[str] | None, subfolder: str | None):
    """`PATH` or `NAME=PATH` command-line sources; one bare PATH is the single-source case."""
    if len(items) == 1 and "=" not in items[0]:
        return Path(items[0])
    sources = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        sources.append(Source(check_source_name(name), Path(path), layout, malignant, subfolder))
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise UserError(f"sources need distinct names; give them as NAME=PATH (got {', '.join(names)})")
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "source",
        nargs="+",
        help="image folder (one sub-folder per class, or an ISIC layout); several as NAME=PATH",
    )
    parser.add_argument("--layout", default="auto", choices=LAYOUTS, help="default: detected")
    parser.add_argument(
        "--malignant",
        help="comma-separated diagnoses to call malignant, or the malignant class folder "
        "(default: the source's own rule)",
    )
    parser.add_argument("--subfolder", help="only the images under this sub-folder of SOURCE")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the prepared dataset to")
    parser.add_argument("--size", type=int, default=224, help="shorter side in pixels (default 224)")
    parser.add_argument("--folds", type=int, default=5, help="number of cross-validation folds")
    parser.add_argument("--seed", type=int, default=0, help="seed for the fold assignment")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument(
        "--against",
        type=Path,
        help="a prepared dataset: drop (and count) every image that duplicates one of its images",
    )
    args = parser.parse_args(argv)
    malignant = frozenset(args.malignant.split(",")) if args.malignant else None
    manifest = prepare(
        parse_sources(args.source, args.layout, malignant, args.subfolder),
        args.out,
        args.size,
        args.folds,
        args.seed,
        args.workers,
        against=args.against,
        layout=args.layout,
        malignant=malignant,
        subfolder=args.subfolder,
    )
    print(json.dumps(summary(manifest, args.out), indent=2))
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
