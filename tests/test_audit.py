"""Duplicate detection, grouped folds and external sets, on real images."""

import io
import itertools

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from orchestrator.data.audit import NEAR_DUPLICATE_BITS, clusters, near_pairs, perceptual_hash
from orchestrator.data.dataset_format import read_manifest
from orchestrator.data.duplicate_sheet import LABEL, TILE, sheet
from orchestrator.data.prepare import prepare
from tests.helpers import SAMPLE, SHARED_DATA, copy_subset, needs_shared


def reencoded(image: Image.Image, size: int, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.resize((size, size)).save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def bits(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def test_hash_survives_resizing_and_reencoding_but_tells_lesions_apart():
    paths = sorted((SAMPLE / "benign").glob("*.jpg"))[:12]
    images = [Image.open(p).convert("RGB") for p in paths]
    for image in images:
        copy = ImageEnhance.Brightness(reencoded(image, 150, 60)).enhance(1.05)
        assert bits(perceptual_hash(image), perceptual_hash(copy)) <= NEAR_DUPLICATE_BITS // 2
    hashes = [perceptual_hash(i) for i in images]
    distinct = [bits(a, b) for n, a in enumerate(hashes) for b in hashes[n + 1 :]]
    assert min(distinct) > NEAR_DUPLICATE_BITS


def test_pairs_and_clusters():
    a, b, c = (bytes([v]) * 32 for v in (0b00000000, 0b00000001, 0b11111111))
    assert near_pairs([a, b, c], max_bits=40) == [(0, 1, 32)]
    assert near_pairs([a], [b, c], max_bits=40) == [(0, 0, 32)]
    labels = clusters(4, [(0, 2, 0), (2, 3, 0)]).tolist()
    assert labels[0] == labels[2] == labels[3] != labels[1]
    # the numbering itself decides the folds (StratifiedGroupKFold orders groups by id): pinned
    assert clusters(6, [(3, 5, 0), (0, 4, 0), (4, 5, 0)]).tolist() == [2, 0, 1, 2, 2, 2]


def test_near_duplicates_share_a_fold_and_are_reported(tmp_path):
    source = copy_subset(tmp_path / "src", per_class=12)
    originals = sorted((source / "malignant").glob("*.jpg"))[:3]
    for path in originals:  # the same photos again, smaller and re-encoded
        reencoded(Image.open(path), 180, 70).save(source / "malignant" / f"copy-{path.name}")
    manifest = prepare(source, tmp_path / "out", image_size=64, folds=3, workers=1)
    clustered = manifest.audit.near_duplicate_clusters
    for path in originals:
        assert [f"malignant/{path.stem}", f"malignant/copy-{path.stem}"] in [sorted(c) for c in clustered]
    rows = pq.read_table(tmp_path / "out" / "shards", columns=["image_id", "fold"]).to_pydict()
    fold = dict(zip(rows["image_id"], rows["fold"], strict=True))
    for path in originals:
        assert fold[f"malignant/{path.stem}"] == fold[f"malignant/copy-{path.stem}"]
    assert sheet(tmp_path / "out", tmp_path / "pairs.png", count=4) == 3
    assert_pairs_side_by_side(tmp_path / "pairs.png", 3)


def test_exact_copies_are_listed(tmp_path):
    source = copy_subset(tmp_path / "src", per_class=6)
    first = sorted((source / "benign").glob("*.jpg"))[0]
    (source / "benign" / "again.jpg").write_bytes(first.read_bytes())
    manifest = prepare(source, tmp_path / "out", image_size=64, folds=2, workers=1)
    assert [sorted(g) for g in manifest.audit.exact_duplicates] == [
        sorted([f"benign/{first.stem}", "benign/again"])
    ]


def test_against_drops_what_the_reference_already_has(tmp_path):
    reference = prepare(
        copy_subset(tmp_path / "a", per_class=10), tmp_path / "ref", image_size=64, folds=2, workers=1
    )
    second = copy_subset(tmp_path / "b", per_class=16)  # its first 10 per class are the reference's
    manifest = prepare(second, tmp_path / "ext", image_size=64, folds=2, workers=1, against=tmp_path / "ref")
    assert manifest.against.dropped == 20 and reference.counts.total == 20
    assert manifest.counts.total == 12
    assert sheet(tmp_path / "ext", tmp_path / "dropped.png", count=6) == 6  # read from the source
    assert_pairs_side_by_side(tmp_path / "dropped.png", 6)


def assert_pairs_side_by_side(path, pairs: int, columns: int = 4) -> None:
    """Each of the sheet's `pairs` tiles shows an image (not the blank canvas) beside its duplicate
    (nearly the same pixels), and the pairs differ from one another."""
    canvas = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    lefts = []
    for k in range(pairs):
        x, y = (k % columns) * (2 * TILE + 8), LABEL + (k // columns) * (TILE + LABEL + 4) + LABEL
        left, right = canvas[y : y + TILE, x : x + TILE], canvas[y : y + TILE, x + TILE : x + 2 * TILE]
        assert left.std() > 10 and right.std() > 10, f"pair {k}: a blank tile"
        assert np.abs(left - right).mean() < 12, f"pair {k}: the two tiles are not the same image"
        lefts.append(left)
    assert all(np.abs(a - b).mean() > 12 for a, b in itertools.pairwise(lefts)), "a pair shown twice"


def grouped_fold_check(prepared):
    rows = pq.read_table(prepared / "shards", columns=["image_id", "label", "fold", "patient_id"]).to_pandas()
    manifest = read_manifest(prepared)
    fold = dict(zip(rows.image_id, rows.fold, strict=True))
    for cluster in manifest.audit.near_duplicate_clusters:
        assert len({fold[i] for i in cluster if i in fold}) == 1
    overall = rows.label.mean()
    for _, part in rows.groupby("fold"):
        assert abs(part.label.mean() - overall) < 0.04
    return rows, manifest


@needs_shared(SHARED_DATA / "kaggle-isic-224")
def test_real_kaggle_audit_and_isic2017_as_an_external_set(tmp_path):
    kaggle = tmp_path / "kaggle"
    prepare(SHARED_DATA / "kaggle-isic-224" / "train", kaggle, image_size=224, folds=5, seed=0)
    rows, manifest = grouped_fold_check(kaggle)
    pairs = {tuple(sorted(p[:2])) for p in manifest.audit.near_duplicate_pairs}
    assert ("malignant/311", "malignant/315") in pairs and len(pairs) >= 50
    external = prepare(
        SHARED_DATA / "isic2017-256", tmp_path / "i17", image_size=224, folds=5, against=kaggle
    )
    assert external.layout == "isic2017"
    assert external.against.dropped > 100  # many ISIC 2017 melanomas are in the Kaggle set
    assert external.counts.total == 2150 - external.against.dropped


def test_patient_groups_never_straddle_folds_and_folds_repeat_for_a_seed(tmp_path):
    source = tmp_path / "isic2020"
    (source / "train").mkdir(parents=True)
    paths = sorted(SAMPLE.glob("*/*.jpg"))[::5]  # 60 real images, both classes
    rows = [["image_name", "patient_id", "benign_malignant", "target"]]
    for n, path in enumerate(paths):
        image_id = f"ISIC_{n:07d}"
        (source / "train" / f"{image_id}.jpg").write_bytes(path.read_bytes())
        malignant = path.parent.name == "malignant"
        rows.append([image_id, f"IP_{n // 4}", "malignant" if malignant else "benign", str(int(malignant))])
    with (source / "train.csv").open("w") as handle:
        handle.writelines(",".join(r) + "\n" for r in rows)
    first = prepare(source, tmp_path / "a", image_size=64, folds=3, seed=1, workers=1)
    again = prepare(source, tmp_path / "b", image_size=64, folds=3, seed=1, workers=2)
    assert first.layout == "isic2020" and "patient_id" in first.metadata_fields
    table = pq.read_table(tmp_path / "a" / "shards", columns=["patient_id", "fold"]).to_pandas()
    assert (table.groupby("patient_id")["fold"].nunique() == 1).all()
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in again.shards]
