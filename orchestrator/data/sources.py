"""Readers for the ways ISIC data arrives: one function per layout, each giving SourceImages.

| layout            | ground truth                                                          |
|-------------------|-----------------------------------------------------------------------|
| folder-per-class  | one sub-folder per class (benign/, malignant/)                        |
| isic2016          | ISBI2016_ISIC_Part3_*GroundTruth.csv: id, benign|malignant or 0|1, no header |
| isic2017          | *Part3_GroundTruth.csv: image_id,melanoma,seborrheic_keratosis        |
| isic2018          | image,MEL,NV,BCC,AKIEC,BKL,DF,VASC (one-hot); HAM10000 metadata       |
| isic2019          | image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot); *Metadata.csv      |
| isic2020          | image_name,patient_id,...,diagnosis,benign_malignant,target           |
| isic-archive      | isic_id,benign_malignant,diagnosis,patient_id,lesion_id,...           |

Labels are benign (0) / malignant (1). Sources with a benign/malignant field use it; one-hot
sources call MEL, BCC, SCC and AKIEC/AK malignant. `malignant=` overrides that with a set of
diagnoses. Patient and lesion ids, age, sex and site are kept when the source has them.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from orchestrator.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
POSITIVE_NAMES = ("malignant", "melanoma", "mel")
BINARY_CLASSES = ["benign", "malignant"]
ONE_HOT_MALIGNANT = frozenset({"MEL", "BCC", "SCC", "AKIEC", "AK"})
META_FIELDS = ("diagnosis", "patient_id", "lesion_id", "age", "sex", "site")


SOURCE_NAME = r"^[A-Za-z][A-Za-z0-9._-]*$"  # starts with a letter: never read as a fold number


def check_source_name(name: str) -> str:
    if not re.fullmatch(SOURCE_NAME, name):
        raise UserError(
            f"source name {name!r}: use letters, digits, '.', '_' or '-', "
            "starting with a letter (e.g. isic2017)"
        )
    return name


@dataclass(frozen=True)
class Source:
    """One image collection: where it is, how it is laid out, and its short name in a study."""

    name: str
    path: Path
    layout: str = "auto"
    malignant: frozenset[str] | None = None
    subfolder: str | None = None  # only images under this sub-folder (ground truth read from `path`)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "layout": self.layout,
            "malignant": sorted(self.malignant) if self.malignant else "source default",
            "subfolder": self.subfolder,
        }


@dataclass(frozen=True)
class SourceImage:
    path: Path
    image_id: str
    label: int
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


Found = tuple[list[SourceImage], list[str]]  # the images, and the ids listed without an image file


class Listing(NamedTuple):
    """What reading a source found."""

    layout: str
    classes: list[str]
    images: list[SourceImage]
    missing: list[str]  # ids its ground truth lists whose image file is not under the root


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def class_names(root: Path, malignant: frozenset[str] | None = None) -> list[str]:
    """The two class sub-folders, benign first: the malignant one is named by `malignant` (the
    spec's `malignant:`), or is the one called malignant, melanoma or mel."""
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and any(_is_image(p) for p in d.iterdir()))
    if len(names) < 2:
        found = f"only '{names[0]}'" if names else "no class folder with images and no ISIC ground-truth CSV"
        raise UserError(
            f"no usable images in {root}: found {found}; expected one sub-folder per class "
            f"(e.g. benign/ and malignant/) holding {', '.join(sorted(IMAGE_SUFFIXES))} files, "
            "or an ISIC challenge / archive layout"
        )
    listed = ", ".join(f"{name}/" for name in names)
    if len(names) > 2:
        raise UserError(
            f"{root} has {len(names)} class folders ({listed}); a benign/malignant study takes exactly "
            "two: move the others out, or point at a folder holding only the two"
        )
    if malignant:
        positive = [name for name in names if name in malignant]
        if len(positive) != 1:
            raise UserError(
                f"{root}: malignant: {sorted(malignant)} must name exactly one of its class "
                f"folders ({listed})"
            )
    else:
        positive = [name for name in names if name.lower() in POSITIVE_NAMES]
        if len(positive) != 1:
            options = " or ".join(f"malignant: [{name}]" for name in names)
            raise UserError(
                f"{root}: cannot tell which of {listed} is the malignant class; name it in the spec's "
                f"source ({options}) or with isic-prepare --malignant NAME"
            )
    return [name for name in names if name not in positive] + positive


def read_folder_per_class(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    classes = class_names(root, malignant)
    images = [
        SourceImage(path, f"{name}/{path.stem}", label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if _is_image(path)
    ]
    return classes, (images, [])


class _Index:
    """Image files under a root, found by id (file stem)."""

    def __init__(self, root: Path) -> None:
        self.by_id = {p.stem: p for p in sorted(root.rglob("*")) if _is_image(p)}

    def resolve(self, rows: list[tuple[str, int, dict[str, str]]], source: str) -> Found:
        """The images of `rows` (id, label, meta) and the ids of those with no file under the root."""
        missing = [image_id for image_id, _, _ in rows if image_id not in self.by_id]
        if missing and len(missing) == len(rows):
            raise UserError(f"{source}: none of the {len(rows)} images it lists were found under the root")
        images = [
            SourceImage(self.by_id[image_id], image_id, label, {k: v for k, v in meta.items() if v})
            for image_id, label, meta in rows
            if image_id in self.by_id
        ]
        return images, missing


def _metadata(root: Path, id_column: str) -> dict[str, dict[str, str]]:
    """Rows of every metadata CSV under `root` that has `id_column`, by image id."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(root.glob("*.csv")):
        if "metadata" in path.name.lower() and id_column in _header(path):
            for row in _rows(path):
                found.setdefault(row[id_column], {}).update(row)
    return found


def _meta(row: dict[str, str], **columns: str) -> dict[str, str]:
    return {name: row.get(column, "") for name, column in columns.items()}


def _binary(label: str) -> int | None:
    text = label.strip().lower()
    return {"benign": 0, "malignant": 1, "0": 0, "1": 1, "0.0": 0, "1.0": 1}.get(text)


def read_isic2016(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    rows = []
    for path in sorted(root.glob("ISBI2016_ISIC_Part3_*GroundTruth.csv")):
        with path.open(newline="") as handle:
            for record in csv.reader(handle):
                if len(record) >= 2 and _binary(record[1]) is not None:
                    rows.append((record[0], _binary(record[1]), {}))
    return BINARY_CLASSES, _Index(root).resolve(rows, "ISIC 2016 ground truth")


def read_isic2017(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    metadata = _metadata(root, "image_id")
    rows = []
    for path in sorted(root.glob("*Part3_GroundTruth.csv")):
        for row in _rows(path):
            melanoma = float(row["melanoma"]) == 1.0
            keratosis = float(row["seborrheic_keratosis"]) == 1.0
            diagnosis = "melanoma" if melanoma else "seborrheic_keratosis" if keratosis else "nevus"
            label = int(diagnosis in malignant) if malignant else int(melanoma)
            extra = metadata.get(row["image_id"], {})
            meta = {"diagnosis": diagnosis, **_meta(extra, age="age_approximate", sex="sex")}
            rows.append((row["image_id"], label, meta))
    return BINARY_CLASSES, _Index(root).resolve(rows, "ISIC 2017 ground truth")


def _read_one_hot(root: Path, malignant: frozenset[str] | None, columns: set[str]) -> tuple[list[str], Found]:
    metadata = {**_metadata(root, "image"), **_metadata(root, "image_id")}
    malignant = malignant or ONE_HOT_MALIGNANT
    rows = []
    for path in sorted(root.glob("*.csv")):
        if not columns <= set(_header(path)) or "metadata" in path.name.lower():
            continue
        for row in _rows(path):
            diagnosis = max(sorted(columns - {"image"}), key=lambda c: float(row[c] or 0))
            extra = metadata.get(row["image"], {})
            meta = {
                "diagnosis": diagnosis,
                **_meta(extra, lesion_id="lesion_id", sex="sex"),
                "age": extra.get("age") or extra.get("age_approx", ""),
                "site": extra.get("localization") or extra.get("anatom_site_general", ""),
            }
            rows.append((row["image"], int(diagnosis in malignant), meta))
    return BINARY_CLASSES, _Index(root).resolve(rows, "one-hot ground truth")


ISIC2018_COLUMNS = {"image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
ISIC2019_COLUMNS = {"image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"}


def read_isic2018(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    return _read_one_hot(root, malignant, ISIC2018_COLUMNS)


def read_isic2019(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    return _read_one_hot(root, malignant, ISIC2019_COLUMNS)


def _read_table(
    root: Path, malignant: frozenset[str] | None, id_column: str, required: set[str], columns: dict[str, str]
) -> tuple[list[str], Found]:
    """Sources with one row per image and a benign_malignant field (ISIC 2020, archive exports)."""
    rows, skipped = [], 0
    for path in sorted(root.glob("*.csv")):
        if not required <= set(_header(path)):
            continue
        for row in _rows(path):
            meta = _meta(row, **columns)
            if malignant:
                label = int(meta["diagnosis"].lower() in {m.lower() for m in malignant})
            else:
                label = _binary(row.get("benign_malignant", ""))
            if label is None:
                skipped += 1  # indeterminate or unlabelled: not usable for a binary task
                continue
            rows.append((row[id_column], label, meta))
    if skipped:
        log.warning("%s: skipped %d rows that are neither benign nor malignant", root, skipped)
    return BINARY_CLASSES, _Index(root).resolve(rows, f"'{id_column}' table")


# metadata column -> the name ISIC 2020 and the ISIC Archive give it
ISIC_METADATA_COLUMNS = {
    "diagnosis": "diagnosis",
    "patient_id": "patient_id",
    "age": "age_approx",
    "sex": "sex",
}


def read_isic2020(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    columns = {**ISIC_METADATA_COLUMNS, "site": "anatom_site_general_challenge"}
    return _read_table(root, malignant, "image_name", {"image_name", "benign_malignant"}, columns)


def read_isic_archive(root: Path, malignant: frozenset[str] | None) -> tuple[list[str], Found]:
    columns = {**ISIC_METADATA_COLUMNS, "lesion_id": "lesion_id", "site": "anatom_site_general"}
    return _read_table(root, malignant, "isic_id", {"isic_id", "benign_malignant"}, columns)


READERS: dict[str, Callable[[Path, frozenset[str] | None], tuple[list[str], Found]]] = {
    "folder-per-class": read_folder_per_class,
    "isic2016": read_isic2016,
    "isic2017": read_isic2017,
    "isic2018": read_isic2018,
    "isic2019": read_isic2019,
    "isic2020": read_isic2020,
    "isic-archive": read_isic_archive,
}


LAYOUTS = ("auto", *READERS)


def detect_layout(root: Path) -> str:
    """The layout of `root`, from the ground-truth files it holds."""
    if any(root.glob("ISBI2016_ISIC_Part3_*GroundTruth.csv")):
        return "isic2016"
    if any(root.glob("*Part3_GroundTruth.csv")):
        return "isic2017"
    for path in sorted(root.glob("*.csv")):
        header = set(_header(path))
        if header >= ISIC2019_COLUMNS:
            return "isic2019"
        if header >= ISIC2018_COLUMNS:
            return "isic2018"
        if {"image_name", "benign_malignant"} <= header:
            return "isic2020"
        if {"isic_id", "benign_malignant"} <= header:
            return "isic-archive"
    return "folder-per-class"


def read_source(
    root: Path, layout: str = "auto", malignant: frozenset[str] | None = None, subfolder: str | None = None
) -> Listing:
    """The source at `root` (only its images under `subfolder`); ground-truth rows whose image file
    is missing are counted and named in a warning."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data source not found or not a folder: {root}")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in READERS:
        raise UserError(f"unknown layout '{layout}'; known: {', '.join(LAYOUTS)}")
    classes, (images, missing) = READERS[layout](root, malignant)
    if subfolder:
        inside = (root / subfolder).resolve()
        if not inside.is_dir():
            raise UserError(f"subfolder '{subfolder}' not found in {root}")
        images = [image for image in images if image.path.resolve().is_relative_to(inside)]
    if not images:
        raise UserError(f"no usable images in {root / (subfolder or '')} (layout {layout})")
    if missing:
        log.warning(
            "%s: %d of the %d images its ground truth lists have no image file under it (e.g. %s); "
            "they are left out",
            root,
            len(missing),
            len(missing) + len(images),
            ", ".join(missing[:3]),
        )
    return Listing(layout, classes, images, missing)


def read_sources(sources: list[Source]) -> list[tuple[Source, Listing]]:
    """Every source read; errors name the source. With several sources each must be binary: label 1
    is the malignant class of every one of them."""
    read = []
    for source in sources:
        try:
            listing = read_source(source.path, source.layout, source.malignant, source.subfolder)
        except UserError as err:
            raise UserError(f"source '{source.name}': {err}") from None
        if len(sources) > 1 and len(listing.classes) != 2:
            raise UserError(
                f"source '{source.name}' has {len(listing.classes)} classes ({', '.join(listing.classes)}); "
                "a multi-source study needs benign and malignant in each"
            )
        read.append((source, listing))
    return read
