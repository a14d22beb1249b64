"""The prepared-dataset format: what a reader of one needs, without what writes one (`prepare.py`).

A prepared dataset is a folder (or a URI) with Parquet shards under `shards/` (`SHARD_SCHEMA`) and
`manifest.json`: classes, folds, counts per fold, class and source, the duplicate audit and the
shards' hashes. `read_manifest` is the one place that reads and checks a manifest; fields this code
does not know are kept (`extra`), and fields that later versions of `prepare` added have defaults,
so every dataset prepared with format 1 loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.data.sources import META_FIELDS
from orchestrator.errors import UserError

MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT_VERSION = 1

SHARD_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.int64()),
        ("fold", pa.int8()),
        ("sha256", pa.string()),
        ("phash", pa.binary()),
        ("source", pa.string()),  # the collection the image came from
        ("also_in", pa.string()),  # other sources that hold a duplicate of it, comma-separated
        ("width", pa.int32()),  # as stored in the source, before resizing
        ("height", pa.int32()),
        *[(name, pa.string()) for name in META_FIELDS],
        ("image", pa.binary()),
    ]
)

PerClass = dict[str, int]  # class name -> images


class _Record(BaseModel):
    """A part of the manifest: read-only, and open to fields this code does not know."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Counts(_Record):
    """Images kept, per class; per fold (keys are fold numbers as text, as in the JSON)."""

    total: int
    per_class: PerClass
    per_fold: dict[str, PerClass]
    per_source: dict[str, PerClass] = {}
    per_source_fold: dict[str, dict[str, PerClass]] = {}  # source -> fold -> class -> images


class SourceEntry(_Record):
    """One named source of the dataset, as `Source.describe()` wrote it (path, malignant, ...)."""

    name: str
    layout: str
    images: int
    listed_without_image: int = 0  # ground-truth rows whose image file was missing (older: not counted)


class Audit(_Record):
    """The duplicate audit (see `audit.py`)."""

    exact_duplicates: list[list[str]]
    near_duplicate_pairs: list[tuple[str, str, int]]  # image ids and Hamming bits
    near_duplicate_clusters: list[list[str]]
    converted_to_rgb: dict[str, int]  # source mode -> images
    smaller_than_image_size: list[str]


class Against(_Record):
    """What was dropped as a duplicate of a reference dataset (`isic-prepare --against`)."""

    reference: str
    dropped: int
    # image id, reference image id, bits, source file; the first versions wrote the two ids only
    duplicates: list[tuple[str, str, int, str] | tuple[str, str]]


class CrossSourceDuplicates(_Record):
    """What de-duplication across the sources of one dataset dropped."""

    dropped: int
    dropped_per_source: dict[str, int]
    label_conflicts: list[str]
    dropped_images: list[tuple[str, str]]  # image id, the source that keeps it


class Diagnoses(_Record):
    """The diagnosis classes, where every image has one (see `diagnoses.py`)."""

    classes: list[str]
    malignant: list[str]  # the classes whose probabilities add up to P(malignant)
    mixed: list[str] = []  # classes whose images carry both binary labels
    counts: Counts


class Shard(_Record):
    file: str
    rows: int
    sha256: str


class Manifest(_Record):
    """`manifest.json` of a prepared dataset."""

    format_version: int
    source: str | list[str]  # the source folder, or one per source
    layout: str | list[str]
    classes: list[str]  # label i is classes[i]; the last is the positive class
    positive_class: str
    image_size: int
    folds: int
    seed: int
    counts: Counts
    unreadable: list[dict[str, Any]]
    shards: list[Shard]
    sources: list[SourceEntry] = []  # absent from datasets made before sources had names
    malignant: Any = None
    fold_groups: str | None = None
    metadata_fields: list[str] = []
    audit: Audit | None = None
    against: Against | None = None
    cross_source_duplicates: CrossSourceDuplicates | None = None
    diagnoses: Diagnoses | None = None  # absent without a diagnosis per image, or prepared before


def parse_manifest(text: str, prepared: str | Path) -> Manifest:
    """The manifest in `text`, the `manifest.json` of `prepared`; a UserError if it is not one."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{prepared}/{MANIFEST} is not JSON ({err}); prepare it again") from None
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{prepared} was prepared by an incompatible version; prepare it again")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{prepared}/{MANIFEST} is damaged; prepare it again\n{err}") from None


def read_manifest(prepared: Path) -> Manifest:
    path = Path(prepared) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{prepared} is not a prepared dataset (no {MANIFEST}); "
            f"make one with: isic-prepare SOURCE --out {prepared}"
        )
    return parse_manifest(path.read_text(), prepared)


def source_names(manifest: Manifest) -> list[str]:
    """The sources of a prepared dataset (one made before sources had names: its folder's name)."""
    if manifest.sources:
        return [source.name for source in manifest.sources]
    return [Path(manifest.source).name]


@dataclass(frozen=True)
class TaskLabels:
    """What a model of one task (`data.task`) learns: its classes (the model's outputs, in order),
    those whose probabilities add up to P(malignant), and the counts per fold and source."""

    task: str
    classes: list[str]
    malignant: list[str]
    counts: Counts


def task_labels(manifest: Manifest, task: str, prepared: str | Path) -> TaskLabels:
    """The labels of `task` ("binary" or "diagnosis") in the dataset `prepared`."""
    if task == "binary":
        return TaskLabels(task, manifest.classes, [manifest.positive_class], manifest.counts)
    found = manifest.diagnoses
    if found is None:
        why = (
            "some of its images have no diagnosis, or it was prepared by an earlier version (remove "
            "it, or the cached copy, to prepare it again)"
            if "diagnosis" in manifest.metadata_fields
            else "a folder-per-class source has only its two folders"
        )
        raise UserError(
            f"{prepared} has no diagnosis classes, which data.task: diagnosis needs: {why}; "
            "or use data.task: binary"
        )
    return TaskLabels(task, found.classes, found.malignant, found.counts)
