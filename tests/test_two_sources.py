"""Several sources in one study: prepare with a `source` column and cross-source de-duplication,
leave-one-source-out trials, colour constancy as a grid axis, and the errors that name a source.
Real images from both shared sets (skipped without ../shared/data)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestrator.config import parse_spec
from orchestrator.data.dataset_format import SHARDS, Manifest
from orchestrator.data.prepare import prepare
from orchestrator.data.sources import Source
from orchestrator.errors import UserError
from orchestrator.evaluation.evaluate import evaluate_fold
from tests.helpers import (
    ISIC2017,
    SHARED_DATA,
    copy_subset,
    isic2017_rows,
    needs_shared,
    write_isic2017,
    write_yaml,
)
from tests.test_cli_errors import assert_user_error, run

KAGGLE = SHARED_DATA / "kaggle-isic-224" / "train"
needs_both = needs_shared(ISIC2017)
PLANTED = "ISIC_9999999"  # a Kaggle malignant image copied into the ISIC 2017 subset


def isic2017_subset(destination: Path, per_class: int, skip: int = 0, plant_from: Path | None = None) -> Path:
    """`per_class` melanomas and `per_class` other lesions of the ISIC 2017 training split (after
    the first `skip` of each), in its own layout (images folder + Part 3 ground truth); with
    `plant_from`, one more image, a copy of that file, listed as a melanoma."""
    rows = isic2017_rows()
    chosen = [r for r in rows if r["melanoma"] == "1.0"][skip : skip + per_class]
    chosen += [r for r in rows if r["melanoma"] == "0.0"][skip : skip + per_class]
    planted = {}
    if plant_from is not None:
        planted = {PLANTED: plant_from}
        chosen.append({"image_id": PLANTED, "melanoma": "1.0", "seborrheic_keratosis": "0.0"})
    return write_isic2017(destination, chosen, planted)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two-sources")
    kaggle = copy_subset(root / "kaggle", per_class=16, source=KAGGLE)
    planted = sorted((kaggle / "malignant").glob("*.jpg"))[0]
    return kaggle, isic2017_subset(root / "isic2017", per_class=16, plant_from=planted)


def sources_of(kaggle: Path, isic: Path) -> list[dict]:
    return [
        {"name": "kaggle", "path": str(kaggle), "layout": "folder-per-class"},
        {"name": "isic2017", "path": str(isic), "layout": "isic2017"},
    ]


@pytest.fixture(scope="module")
def both(tmp_path_factory, two_sources) -> tuple[Path, Manifest]:
    kaggle, isic = two_sources
    out = tmp_path_factory.mktemp("prepared") / "both"
    sources = [Source("kaggle", kaggle, "folder-per-class"), Source("isic2017", isic, "isic2017")]
    return out, prepare(sources, out, image_size=64, folds=4, workers=1)


@needs_both
def test_two_sources_make_one_dataset_with_a_source_column(both):
    out, manifest = both
    table = pq.read_table(
        out / SHARDS, columns=["image_id", "label", "fold", "source", "also_in"]
    ).to_pandas()
    # the planted copy of a Kaggle image is kept once, in the first source, which records the other
    assert manifest.cross_source_duplicates.dropped_per_source == {"isic2017": 1}
    assert f"isic2017/{PLANTED}" not in set(table["image_id"])
    assert (table["also_in"] == "isic2017").sum() == 1
    assert table.loc[table["also_in"] == "isic2017", "source"].item() == "kaggle"
    assert manifest.counts.per_source == {
        "kaggle": {"benign": 16, "malignant": 16},
        "isic2017": {"benign": 16, "malignant": 16},
    }
    assert table["image_id"].str.startswith(("kaggle/", "isic2017/")).all()
    # stratified by class and source: every fold holds both classes of both sources
    per_fold = table.groupby(["fold", "source", "label"]).size()
    assert len(per_fold) == 4 * 2 * 2 and per_fold.min() >= 3
    assert [s.name for s in manifest.sources] == ["kaggle", "isic2017"]
    assert manifest.sources[1].layout == "isic2017"


@needs_both
def test_a_held_out_source_is_all_of_validation_and_none_of_training(ray_local, both):
    from orchestrator.data.pipeline import build_datasets, train_class_counts

    out, manifest = both
    datasets = build_datasets(out, -1, 64, "none", "none", val_source="isic2017", manifest=manifest)
    rows = pq.read_table(out / SHARDS, columns=["label", "source"]).to_pandas()
    val_labels = np.concatenate([b["label"] for b in datasets["val"].iter_batches(batch_format="numpy")])
    train_labels = np.concatenate([b["label"] for b in datasets["train"].iter_batches(batch_format="numpy")])
    held, others = rows[rows["source"] == "isic2017"], rows[rows["source"] != "isic2017"]
    assert sorted(val_labels) == sorted(held["label"]) and sorted(train_labels) == sorted(others["label"])
    counts = train_class_counts(manifest, -1, None, "isic2017")
    assert counts == {0: int((others["label"] == 0).sum()), 1: int((others["label"] == 1).sum())}


@needs_both
def test_evaluation_data_selects_a_fold_a_source_or_both(both):
    from orchestrator.evaluation.evaluate import resolve_data

    out, _ = both
    assert resolve_data(f"{out}@1,isic2017", 64, out)[2:] == (1, "isic2017")
    assert resolve_data(f"{out}@kaggle", 64, out)[2:] == (None, "kaggle")
    for bad, message in (
        ("@isic2018", "no source 'isic2018'"),
        ("@0,1", "one fold, one source"),
        ("@", "one fold"),
    ):
        with pytest.raises(UserError, match=message):
            resolve_data(f"{out}{bad}", 64, out)


@needs_both
def test_val_source_all_resolves_against_a_prepared_datasets_sources(both):
    out, _ = both
    base = {"search": {"backbone": "efficientnet_lite0", "lr": 1e-3}, "train": {"epochs": 1}, "name": "x"}
    spec = parse_spec(
        {**base, "data": {"prepared": str(out), "val_source": "all"}, "scheduler": {"type": "fifo"}}
    )
    assert spec.data.with_sources(["kaggle", "isic2017"]).val_sources == ["kaggle", "isic2017"]
    with pytest.raises(UserError, match="val_source names isic2017; sources: kaggle"):
        spec.data.model_copy(update={"val_source": "isic2017"}).with_sources(["kaggle", "other"])


@needs_both
def test_a_typo_in_one_sources_layout_fails_before_ray_starts_naming_it(tmp_path, two_sources):
    kaggle, isic = two_sources
    sources = sources_of(kaggle, isic)
    sources[1]["layout"] = "isic217"
    spec = {
        "name": "typo",
        "data": {"source": sources, "cache": str(tmp_path / "prepared")},
        "search": {"backbone": "efficientnet_lite0", "lr": 1e-3},
        "train": {"epochs": 1, "weights": "package"},
        "storage": str(tmp_path / "runs"),
    }
    done, seconds = run("orchestrator.sweep", str(write_yaml(tmp_path / "typo.yaml", spec)))
    assert_user_error(done, "data.source[1]", "source 'isic2017'", "unknown layout 'isic217'", "isic2017")
    assert "Ray" not in done.stderr and not (tmp_path / "prepared").exists()
    assert seconds < 60


def test_an_unknown_key_in_a_source_entry_is_placed():
    spec = {
        "name": "x",
        "data": {"source": [{"name": "a", "path": "a"}, {"name": "b", "path": "b", "layot": "isic2017"}]},
        "search": {"backbone": "efficientnet_lite0", "lr": 1e-3},
        "train": {"epochs": 1},
    }
    with pytest.raises(
        UserError, match=r"unknown key 'layot' in 'data.source\[1\]'; allowed keys: name, path"
    ):
        parse_spec(spec)


def test_held_out_sources_must_exist_and_exclude_a_test_fold():
    base = {
        "name": "x",
        "search": {"backbone": "efficientnet_lite0", "lr": 1e-3},
        "train": {"epochs": 1},
    }
    sources = [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}]
    with pytest.raises(UserError, match="val_source names c; sources: a, b"):
        parse_spec({**base, "data": {"source": sources, "val_source": "c"}})
    with pytest.raises(UserError, match="cannot be compared by ASHA; use scheduler: {type: fifo}"):
        parse_spec({**base, "data": {"source": sources, "val_source": "a"}})
    base["scheduler"] = {"type": "fifo"}
    with pytest.raises(UserError, match="test_fold cannot be combined with val_source"):
        parse_spec({**base, "data": {"source": sources, "val_source": "a", "test_fold": 4}})
    spec = parse_spec(
        {**base, "data": {"source": sources, "val_source": "all", "color": ["none", "shades_of_gray"]}}
    )
    assert spec.data.splits() == [(0, ""), (-1, "a"), (-1, "b")]
    grid = spec.grid()
    assert len(grid) == 2 * 3
    assert {(c["validation"], c["val_fold"], c["val_source"]) for c in grid} == {
        ("fold 0", 0, ""),
        ("held-out a", -1, "a"),
        ("held-out b", -1, "b"),
    }


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory, two_sources):
    from orchestrator.driver import run_sweep

    kaggle, isic = two_sources
    root = tmp_path_factory.mktemp("study")
    planted = sorted((isic / "ISIC-2017_Training_Data").glob("ISIC_*.jpg"))[0]  # a training image
    test_set = isic2017_subset(root / "isic2017-test", per_class=6, skip=16, plant_from=planted)
    spec = parse_spec(
        {
            "name": "two-sources",
            "data": {
                "source": sources_of(kaggle, isic),
                "folds": 4,
                "val_source": "isic2017",
                "color": ["none", "shades_of_gray"],
                "image_size": 64,
                "cache": str(root / "prepared"),
                "shortcut_audit": True,
            },
            "search": {"backbone": "efficientnet_lite0", "lr": 1e-3, "batch_size": 16},
            "train": {"epochs": 1, "weights": "package"},
            "scheduler": {"type": "fifo"},
            "evaluation": {
                "test": [{"name": "isic-test", "path": str(test_set), "layout": "isic2017"}],
                "bootstrap": 20,
            },
            "storage": str(root / "runs"),
        }
    )
    run_dir, frame = run_sweep(spec)
    return spec, run_dir, frame


@needs_both
@pytest.mark.slow
def test_a_two_source_study_holds_a_source_out(study):
    spec, run_dir, frame = study
    assert len(frame) == 4 and set(frame["status"]) == {"completed"}
    assert set(frame["validation"]) == {"fold 0", "held-out isic2017"}
    assert set(frame["color"]) == {"none", "shades_of_gray"}
    loso = pd.read_csv(run_dir / "leaderboard-loso.csv")
    assert len(loso) == 2 and set(loso["color"]) == {"none", "shades_of_gray"}
    for _, row in loso.iterrows():
        trials = frame[frame["color"] == row["color"]]
        held = trials[trials["val_source"] == "isic2017"]["last_val_auc"].item()
        inside = trials[trials["val_source"] == ""]["last_val_auc"].item()
        assert row["held_out_isic2017"] == pytest.approx(held) == pytest.approx(row["worst_held_out"])
        assert row["in_source_mean"] == pytest.approx(inside)
        assert row["gap"] == pytest.approx(inside - held)
    assert "held_out_isic2017" in (run_dir / "leaderboard-loso.md").read_text()


@needs_both
@pytest.mark.slow
def test_a_held_out_trial_validates_on_the_whole_source_with_its_colour_method(study):
    spec, run_dir, frame = study
    prepared = Path(json.loads((run_dir / "run.json").read_text())["prepared"])
    for _, trial in frame.iterrows():
        meta = json.loads((Path(trial["checkpoint"]) / "meta.json").read_text())
        assert meta["color"] == trial["color"]
        source = trial["val_source"] or None
        fold = None if source else int(trial["val_fold"])
        # re-scored from the checkpoint, the same number: same images, same colour method
        scored = evaluate_fold(Path(trial["checkpoint"]), prepared, fold, source)
        assert scored["val_auc"] == pytest.approx(trial["best_val_auc"], abs=1e-6)
    shards = pq.read_table(prepared / SHARDS, columns=["source"]).to_pandas()
    assert (shards["source"] == "isic2017").sum() == 32  # what the held-out trials validated on


@needs_both
@pytest.mark.slow
def test_the_best_in_source_trial_is_tested_on_a_deduplicated_test_source(study):
    spec, run_dir, frame = study
    best = frame[frame["test_threshold"].notna()]
    assert len(best) == 1 and best["val_source"].item() == ""  # tested: an in-source trial
    test_set = Path(spec.data.cache).glob("isic-test-64px-against-*")
    manifest = json.loads((next(test_set) / "manifest.json").read_text())
    assert PLANTED in {duplicate[0] for duplicate in manifest["against"]["duplicates"]}
    assert manifest["counts"]["total"] + manifest["against"]["dropped"] == 13
    summary = json.loads((run_dir / "report" / "metrics.json").read_text())
    names = list(summary["datasets"])
    assert names[0].endswith("@0") and names[1].endswith("@0,kaggle") and names[2].endswith("@0,isic2017")
    assert (
        summary["datasets"][names[1]]["images"] + summary["datasets"][names[2]]["images"]
        == summary["datasets"][names[0]]["images"]
    )
    page = (run_dir / "report" / "report.html").read_text()
    assert "Held-out sources" in page and "Shortcut audit of the training data" in page
    assert page.count('<img src="data:image/png;base64,') >= 4  # the audit's picture is inlined too
    audit = json.loads((run_dir / "shortcuts" / "shortcuts.json").read_text())
    assert set(audit["views"]) == {"whole", "border", "centre", "trivial", "source"}


def test_colour_constancy_undoes_a_colour_cast():
    from trainables.color import shades_of_gray
    from trainables.transforms import decode_jpeg

    def chromaticity(image: np.ndarray) -> np.ndarray:  # colour without brightness
        values = image.astype(np.float64) + 1
        return values / values.sum(axis=2, keepdims=True)

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(chromaticity(a) - chromaticity(b)).mean())

    sample = Path(__file__).parent.parent / "datasets" / "isic-sample"
    for path in [
        *sorted((sample / "benign").glob("*.jpg"))[:3],
        *sorted((sample / "malignant").glob("*.jpg"))[:3],
    ]:
        image = decode_jpeg(path.read_bytes())
        cast = (image * np.array([1.0, 0.85, 0.65])).astype(np.uint8)  # a warm, yellowish dermatoscope
        before = distance(cast, image)
        after = distance(shades_of_gray(cast), shades_of_gray(image))
        assert after < before / 10, (path.name, before, after)
        # the illuminant of a corrected image is neutral: equal 6-norm means per channel
        corrected = shades_of_gray(cast).reshape(-1, 3).astype(np.float64) / 255
        illuminant = np.power(np.mean(corrected**6, axis=0), 1 / 6)
        assert illuminant.max() / illuminant.min() < 1.05
