import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from orchestrator.data.dataset_format import read_manifest
from orchestrator.data.decode import load_resized
from orchestrator.data.folds import assign_folds
from orchestrator.data.prepare import prepare
from orchestrator.errors import UserError
from tests.helpers import ROOT, SAMPLE, copy_subset


def table(prepared):
    return pq.read_table(prepared / "shards").to_pandas()


def test_counts_labels_and_folds(small_prepared):
    manifest = read_manifest(small_prepared)
    assert manifest.classes == ["benign", "malignant"]
    assert manifest.counts.per_class == {"benign": 20, "malignant": 20}
    rows = table(small_prepared)
    assert len(rows) == 40 and set(rows["fold"]) == {0, 1, 2, 3}
    assert rows.groupby("label").size().to_dict() == {0: 20, 1: 20}
    assert all(rows[rows.label == 1].image_id.str.startswith("malignant/"))
    per_fold = rows.groupby(["fold", "label"]).size().unstack()
    assert (per_fold == 5).all().all()  # stratified: 5 of each class per fold


def test_images_are_resized_once(small_prepared):
    import io

    first = table(small_prepared)["image"].iloc[0]
    with Image.open(io.BytesIO(first)) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) == 64


def test_deterministic_for_a_seed(tmp_path, small_source):
    a = prepare(small_source, tmp_path / "a", image_size=64, folds=4, seed=3, workers=1)
    b = prepare(small_source, tmp_path / "b", image_size=64, folds=4, seed=3, workers=2)
    prepare(small_source, tmp_path / "c", image_size=64, folds=4, seed=4, workers=1)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert not (table(tmp_path / "a")["fold"] == table(tmp_path / "c")["fold"]).all()


def test_unreadable_files_are_reported_and_skipped(tmp_path):
    source = copy_subset(tmp_path / "src", per_class=8)
    (source / "benign" / "truncated.jpg").write_bytes(
        (source / "benign").glob("*.jpg").__next__().read_bytes()[:300]
    )
    (source / "malignant" / "empty.jpg").write_bytes(b"")
    (source / "malignant" / "text.png").write_text("not an image")
    manifest = prepare(source, tmp_path / "out", image_size=64, folds=2, workers=1)
    bad = {Path(u["path"]).name for u in manifest.unreadable}
    assert bad == {"truncated.jpg", "empty.jpg", "text.png"}
    assert all(u["reason"] for u in manifest.unreadable)
    assert manifest.counts.total == 16


def test_large_rotated_grayscale_and_palette_images_become_upright_rgb(tmp_path):
    photo = Image.open(next((SAMPLE / "malignant").glob("*.jpg"))).resize((1200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    photo.convert("L").save(tmp_path / "gray.jpg")
    photo.convert("P").save(tmp_path / "palette.png")
    photo.convert("RGBA").save(tmp_path / "alpha.png")
    import io

    with Image.open(io.BytesIO(load_resized(tmp_path / "rotated.jpg", 100).jpeg)) as image:
        assert image.mode == "RGB" and image.size == (100, 150)  # upright: taller than wide
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg")
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    for name in ("gray.jpg", "palette.png", "alpha.png", "cmyk.jpg", "sixteen.png"):
        with Image.open(io.BytesIO(load_resized(tmp_path / name, 100).jpeg)) as image:
            assert image.mode == "RGB" and image.size == (150, 100)
            assert 40 < np.asarray(image).mean() < 215, name  # not clipped to black or white


def test_small_upright_jpeg_passes_through_unchanged():
    path = next((SAMPLE / "benign").glob("*.jpg"))
    assert load_resized(path, 224).jpeg == path.read_bytes()


def test_folder_without_images_is_a_user_error(tmp_path):
    (tmp_path / "benign").mkdir()
    (tmp_path / "benign" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no usable images"):
        prepare(tmp_path, tmp_path / "out")


def test_single_class_is_a_user_error(tmp_path):
    copy_subset(tmp_path / "src", per_class=3)
    shutil.rmtree(tmp_path / "src" / "malignant")
    with pytest.raises(UserError, match="only 'benign'"):
        prepare(tmp_path / "src", tmp_path / "out")


def test_refuses_to_overwrite_a_prepared_dataset(small_prepared):
    with pytest.raises(UserError, match="already holds a prepared dataset"):
        prepare(SAMPLE, small_prepared)


def test_too_few_images_for_the_folds():
    with pytest.raises(UserError, match="too few images for 5 folds"):
        assign_folds(np.array([0, 0, 0, 1, 1, 1]), np.arange(6), folds=5, seed=0)


def test_a_class_held_by_fewer_patients_than_folds_is_refused_naming_them():
    labels = np.array([0] * 20 + [1] * 10)
    patients = np.r_[np.arange(20), [100] * 5 + [101] * 5]  # ten malignant images, two patients
    with pytest.raises(UserError) as caught:
        assign_folds(labels, patients, folds=5, seed=0, classes=["benign", "malignant"])
    assert "5 folds with every class in every fold: 2 of malignant" in str(caught.value)
    assert "set data.folds to at most 2" in str(caught.value)
    assert set(assign_folds(labels, patients, folds=2, seed=0)[labels == 1]) == {0, 1}


def test_a_test_set_needs_no_class_in_every_fold_and_one_group_is_never_enough_to_train():
    labels = np.array([0] * 12 + [1] * 4)
    patients = np.r_[np.arange(12), [100] * 4]  # four malignant images of one patient
    assert len(set(assign_folds(labels, patients, folds=3, seed=0, every_class=False))) == 3
    with pytest.raises(
        UserError, match=r"1 of 1 \(an image.*\); folds need at least 2 of each, or add images"
    ):
        assign_folds(labels, patients, folds=3, seed=0)


def test_a_fold_left_without_a_class_is_refused():
    """Mixed-label groups (a duplicate cluster labelled both ways) can defeat the stratification."""
    labels = np.array([0, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1])
    groups = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6])
    with pytest.raises(UserError, match=r"fold \d has no (benign|malignant) image.*use fewer folds"):
        assign_folds(labels, groups, folds=4, seed=0, classes=["benign", "malignant"])


def test_a_test_set_with_nothing_left_after_deduplication_is_refused(small_source, small_prepared, tmp_path):
    with pytest.raises(UserError, match=f"every image of .* is also in {small_prepared}: none is left"):
        prepare(small_source, tmp_path / "test", image_size=64, folds=4, against=small_prepared)


def test_not_a_prepared_dataset(tmp_path):
    with pytest.raises(UserError, match="make one with: isic-prepare SOURCE"):
        read_manifest(tmp_path)


def test_prepare_cli_writes_a_dataset(tmp_path, small_source):
    import subprocess
    import sys

    out = tmp_path / "cli"
    args = [str(small_source), "--out", str(out), "--size", "48", "--folds", "2", "--workers", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.data.prepare", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert read_manifest(out).counts.total == 40 and '"unreadable": 0' in done.stdout


def test_sweep_rejects_a_prepared_dataset_with_other_folds(small_prepared):
    from orchestrator.config import parse_spec
    from orchestrator.driver import prepared_dataset

    spec = parse_spec(
        {
            "name": "t",
            "data": {"prepared": str(small_prepared), "folds": 5},
            "search": {"backbone": "test_efficientnet", "lr": 0.1},
            "train": {"epochs": 1},
        }
    )
    with pytest.raises(UserError, match="prepared with 4 folds"):
        prepared_dataset(spec)


def test_refuses_a_folder_that_holds_something_else(tmp_path, small_source):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        prepare(small_source, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_two_processes_preparing_one_cache_entry_both_get_it(small_source, tmp_path):
    out = tmp_path / "cache" / "entry"
    code = "import sys; from pathlib import Path; from orchestrator.data.prepare import prepare_once; "
    code += "prepare_once(Path(sys.argv[1]), Path(sys.argv[2]), 32, 2, workers=1)"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(small_source), str(out)], cwd=ROOT, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    errors = [run.communicate(timeout=300)[1].decode() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert read_manifest(out).counts.total == 40 and [p.name for p in out.parent.iterdir()] == ["entry"]
