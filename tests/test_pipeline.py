import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.pipeline import Oversample, build_datasets, oversample_factors, train_class_counts
from orchestrator.prepare import read_manifest
from orchestrator.presets import Preprocess


def test_oversample_factors_bring_classes_level():
    assert oversample_factors({0: 100, 1: 40}) == {0: 1.0, 1: 2.5}


def test_oversample_balances_in_expectation():
    labels = np.array([0] * 600 + [1] * 200)
    table = pa.table({"label": labels, "x": np.arange(800)})
    out = Oversample(oversample_factors({0: 600, 1: 200}), seed=0)(table)
    counts = np.bincount(out.column("label").to_numpy())
    assert counts[0] == 600 and abs(counts[1] - 600) < 20


def test_train_counts_leave_out_the_validation_fold(small_prepared):
    manifest = read_manifest(small_prepared)
    assert train_class_counts(manifest, val_fold=0) == {0: 15, 1: 15}


def test_preprocess_outputs_normalised_nchw(small_prepared):
    rows = pq.read_table(small_prepared / "shards").slice(0, 4).to_pydict()
    batch = {"image": np.array(rows["image"], dtype=object), "label": np.array(rows["label"])}
    out = Preprocess(48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(batch)
    assert out["image"].shape == (4, 3, 48, 48) and out["image"].dtype == np.float32
    assert out["image"].min() >= -1.01 and out["image"].max() <= 1.01
    again = Preprocess(48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(batch)
    assert np.array_equal(out["image"], again["image"])  # evaluation is deterministic
    augmented = Preprocess(48, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), augment="standard")(batch)
    assert augmented["image"].shape == out["image"].shape
    assert not np.array_equal(augmented["image"], out["image"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown augment preset"):
        Preprocess(32, (0,) * 3, (1,) * 3, augment="heavy")(
            {"image": np.array([b""], dtype=object), "label": [0]}
        )


def test_ray_datasets_split_by_fold(ray_local, small_prepared):
    datasets = build_datasets(small_prepared, 1, 32, (0.5,) * 3, (0.5,) * 3, "standard", "oversample")
    val = list(datasets["val"].iter_batches(batch_size=100))
    assert sum(len(b["label"]) for b in val) == 10
    train = np.concatenate([b["label"] for b in datasets["train"].iter_batches(batch_size=100)])
    assert len(train) == 30 and np.bincount(train).tolist() == [15, 15]
    first = datasets["train"].take_batch(4)
    assert first["image"].shape == (4, 3, 32, 32)
