"""Each ISIC layout, built as a tiny fixture from real images, read back with the right labels."""

import csv
import logging
import shutil
from pathlib import Path

import pytest

from orchestrator.data.dataset_format import read_manifest
from orchestrator.data.prepare import prepare
from orchestrator.data.sources import detect_layout, read_source
from orchestrator.errors import UserError
from tests.helpers import SAMPLE, SHARED_DATA, needs_shared

IMAGES = sorted((SAMPLE / "benign").glob("*.jpg"))[:4] + sorted((SAMPLE / "malignant").glob("*.jpg"))[:4]


def lay_out(root: Path, ids: list[str], csvs: dict[str, list[list[str]]], subfolder: str = "images") -> Path:
    (root / subfolder).mkdir(parents=True)
    for image_id, path in zip(ids, IMAGES, strict=False):
        shutil.copy(path, root / subfolder / f"{image_id}.jpg")
    for name, rows in csvs.items():
        with (root / name).open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return root


IDS = [f"ISIC_{n:07d}" for n in range(8)]


def labels_of(root, **kwargs):
    layout, classes, images, _ = read_source(root, **kwargs)
    return layout, {i.image_id: i.label for i in images}, {i.image_id: i.meta for i in images}


def test_isic2016_without_header(tmp_path):
    rows = [[i, "benign" if n < 4 else "malignant"] for n, i in enumerate(IDS)]
    root = lay_out(tmp_path, IDS, {"ISBI2016_ISIC_Part3_Training_GroundTruth.csv": rows})
    layout, labels, _ = labels_of(root)
    assert layout == "isic2016" and sum(labels.values()) == 4 and labels[IDS[5]] == 1


def test_isic2017_melanoma_is_malignant_keratosis_is_not(tmp_path):
    rows = [["image_id", "melanoma", "seborrheic_keratosis"]]
    rows += [[i, "1.0" if n >= 6 else "0.0", "1.0" if n in (4, 5) else "0.0"] for n, i in enumerate(IDS)]
    meta = [["image_id", "age_approximate", "sex"]] + [[i, "55", "female"] for i in IDS]
    root = lay_out(tmp_path, IDS, {"X_Part3_GroundTruth.csv": rows, "X_Data_metadata.csv": meta})
    layout, labels, metas = labels_of(root)
    assert layout == "isic2017" and [labels[i] for i in IDS] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert metas[IDS[4]] == {"diagnosis": "seborrheic_keratosis", "age": "55", "sex": "female"}
    _, relabelled, _ = labels_of(root, malignant=frozenset({"melanoma", "seborrheic_keratosis"}))
    assert sum(relabelled.values()) == 4


def one_hot(columns, diagnoses):
    return [["image", *columns]] + [
        [i, *("1.0" if c == d else "0.0" for c in columns)] for i, d in zip(IDS, diagnoses, strict=True)
    ]


def test_isic2018_one_hot_with_ham10000_lesion_ids(tmp_path):
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    diagnoses = ["NV", "NV", "BKL", "DF", "MEL", "BCC", "AKIEC", "VASC"]
    meta = [["lesion_id", "image_id", "dx", "age", "sex", "localization"]] + [
        [f"HAM_{n // 2}", i, "x", "40", "male", "back"] for n, i in enumerate(IDS)
    ]
    root = lay_out(
        tmp_path, IDS, {"GroundTruth.csv": one_hot(columns, diagnoses), "HAM10000_metadata.csv": meta}
    )
    layout, labels, metas = labels_of(root)
    assert layout == "isic2018"
    assert [labels[i] for i in IDS] == [0, 0, 0, 0, 1, 1, 1, 0]
    assert metas[IDS[3]]["lesion_id"] == "HAM_1" and metas[IDS[3]]["site"] == "back"


def test_isic2019_one_hot_scc_and_ak_are_malignant(tmp_path):
    columns = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    diagnoses = ["NV", "BKL", "DF", "VASC", "SCC", "AK", "MEL", "BCC"]
    meta = [["image", "age_approx", "anatom_site_general", "lesion_id", "sex"]] + [
        [i, "60", "head", f"IL_{n}", "female"] for n, i in enumerate(IDS)
    ]
    root = lay_out(
        tmp_path,
        IDS,
        {"ISIC_2019_GroundTruth.csv": one_hot(columns, diagnoses), "ISIC_2019_Metadata.csv": meta},
    )
    layout, labels, metas = labels_of(root)
    assert layout == "isic2019" and [labels[i] for i in IDS] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert metas[IDS[0]]["age"] == "60" and metas[IDS[0]]["lesion_id"] == "IL_0"


def test_isic2020_target_and_patient_ids(tmp_path):
    header = [
        "image_name",
        "patient_id",
        "sex",
        "age_approx",
        "anatom_site_general_challenge",
        "diagnosis",
        "benign_malignant",
        "target",
    ]
    rows = [header] + [
        [
            i,
            f"IP_{n % 3}",
            "male",
            "45",
            "torso",
            "melanoma" if n >= 6 else "nevus",
            "malignant" if n >= 6 else "benign",
            "1" if n >= 6 else "0",
        ]
        for n, i in enumerate(IDS)
    ]
    root = lay_out(tmp_path, IDS, {"train.csv": rows}, subfolder="train")
    layout, labels, metas = labels_of(root)
    assert layout == "isic2020" and sum(labels.values()) == 2 and metas[IDS[4]]["patient_id"] == "IP_1"


def test_isic_archive_export_skips_indeterminate(tmp_path):
    header = ["isic_id", "benign_malignant", "diagnosis", "patient_id", "lesion_id"]
    states = ["benign", "benign", "benign", "indeterminate", "", "malignant", "malignant", "malignant"]
    rows = [header] + [
        [i, s, "x", f"IP_{n}", f"IL_{n}"] for n, (i, s) in enumerate(zip(IDS, states, strict=True))
    ]
    root = lay_out(tmp_path, IDS, {"metadata.csv": rows})
    layout, labels, _ = labels_of(root)
    assert layout == "isic-archive" and len(labels) == 6 and sum(labels.values()) == 3


def test_a_csv_that_names_no_image_on_disk_is_a_user_error(tmp_path):
    rows = [["image_id", "melanoma", "seborrheic_keratosis"], ["ISIC_9999999", "1.0", "0.0"]]
    root = lay_out(tmp_path, IDS, {"X_Part3_GroundTruth.csv": rows})
    with pytest.raises(UserError, match="none of the 1 images"):
        read_source(root)


def test_rows_whose_image_is_missing_are_counted_and_named(tmp_path, caplog):
    rows = [["image_id", "melanoma", "seborrheic_keratosis"]]
    rows += [[image_id, "1.0" if n % 2 else "0.0", "0.0"] for n, image_id in enumerate(IDS)]
    root = lay_out(tmp_path / "src", IDS, {"X_Part3_GroundTruth.csv": rows})
    for image_id in IDS[-2:]:
        (root / "images" / f"{image_id}.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        listing = read_source(root)
    assert listing.missing == IDS[-2:] and len(listing.images) == 6
    assert (
        f"2 of the 8 images its ground truth lists have no image file under it (e.g. {IDS[-2]}" in caplog.text
    )
    prepare(root, tmp_path / "out", image_size=32, folds=2, workers=1)
    assert read_manifest(tmp_path / "out").sources[0].listed_without_image == 2


def test_unknown_layout(tmp_path):
    with pytest.raises(UserError, match="unknown layout 'isic2030'"):
        read_source(tmp_path, layout="isic2030")


def test_folder_per_class_is_the_fallback():
    assert detect_layout(SAMPLE) == "folder-per-class"


@needs_shared(SHARED_DATA / "isic2017-256")
def test_real_isic2017_counts():
    layout, classes, images, _ = read_source(SHARED_DATA / "isic2017-256")
    assert layout == "isic2017" and len(images) == 2150
    diagnoses = [i.meta["diagnosis"] for i in images]
    assert diagnoses.count("melanoma") == 404 and sum(i.label for i in images) == 404
    assert diagnoses.count("seborrheic_keratosis") == 296


def test_every_layout_has_a_dataset_card():
    import yaml

    from orchestrator.data.sources import READERS
    from tests.helpers import ROOT

    cards = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "datasets" / "cards").glob("*.yaml")}
    assert set(cards) == set(READERS)
    assert all(
        card["layout"] == name and card["licence"] and card["citation"] for name, card in cards.items()
    )


def test_a_spec_can_relabel_an_isic_source(tmp_path):
    from orchestrator.config import parse_spec
    from orchestrator.data.dataset_format import read_manifest
    from orchestrator.driver import prepared_dataset

    rows = [["image_id", "melanoma", "seborrheic_keratosis"]]
    rows += [[i, "1.0" if n >= 6 else "0.0", "1.0" if n in (0, 1) else "0.0"] for n, i in enumerate(IDS)]
    root = lay_out(tmp_path / "src", IDS, {"X_Part3_GroundTruth.csv": rows})
    raw = {
        "name": "t",
        "data": {"source": str(root), "folds": 2, "image_size": 32, "cache": str(tmp_path / "cache")},
        "search": {"backbone": "test_efficientnet", "lr": 0.1},
        "train": {"epochs": 1},
    }
    default = read_manifest(prepared_dataset(parse_spec(raw)))
    raw["data"]["malignant"] = ["melanoma", "seborrheic_keratosis"]
    relabelled = read_manifest(prepared_dataset(parse_spec(raw)))
    assert default.counts.per_class == {"benign": 6, "malignant": 2}
    assert relabelled.counts.per_class == {"benign": 4, "malignant": 4}


def folders(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        shutil.copy(IMAGES[0], root / name / "1.jpg")
    return root


def test_a_third_class_folder_is_refused_not_scored_as_binary(tmp_path):
    with pytest.raises(UserError, match=r"has 3 class folders \(benign/, malignant/, nevus/\).*exactly two"):
        read_source(folders(tmp_path, "benign", "malignant", "nevus"))


def test_folders_of_unknown_names_need_the_malignant_one_named(tmp_path):
    root = folders(tmp_path, "cancer", "healthy")
    with pytest.raises(UserError) as caught:
        read_source(root)
    assert str(caught.value).endswith(
        "cannot tell which of cancer/, healthy/ is the malignant class; name it in the spec's source "
        "(malignant: [cancer] or malignant: [healthy]) or with isic-prepare --malignant NAME"
    )
    _, classes, images, _ = read_source(root, malignant=frozenset({"cancer"}))
    assert classes == ["healthy", "cancer"] and {i.image_id: i.label for i in images} == {
        "healthy/1": 0,
        "cancer/1": 1,
    }
    with pytest.raises(UserError, match="must name exactly one of its class folders"):
        read_source(root, malignant=frozenset({"tumour"}))
