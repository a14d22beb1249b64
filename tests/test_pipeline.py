import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data import pipeline
from orchestrator.data.dataset_format import SHARDS, read_manifest
from orchestrator.data.pipeline import (
    Oversample,
    build_datasets,
    class_weights,
    held_splits,
    oversample_factors,
    shard_files,
    shared_rows,
    train_class_counts,
)
from trainables.errors import UserError
from trainables.transforms import Preprocess, for_epoch


def test_oversample_factors_bring_classes_level():
    assert oversample_factors({0: 100, 1: 40}) == {0: 1.0, 1: 2.5}


def test_oversample_balances_in_expectation():
    labels = np.array([0] * 600 + [1] * 200)
    table = pa.table({"label": labels, "image_id": [str(i) for i in range(800)]})
    out = Oversample(oversample_factors({0: 600, 1: 200}), seed=0)(table)
    counts = np.bincount(out.column("label").to_numpy())
    assert counts[0] == 600 and abs(counts[1] - 600) < 20


def test_class_weights_are_inverse_frequency():
    weights = class_weights({0: 300, 1: 100})
    assert weights == pytest.approx([400 / 600, 400 / 200])
    assert 300 * weights[0] == pytest.approx(100 * weights[1])  # each class weighs the same in the loss


def test_train_counts_leave_out_the_validation_fold(small_prepared):
    manifest = read_manifest(small_prepared)
    assert train_class_counts(manifest, val_fold=0) == {0: 15, 1: 15}


def _batch(prepared, rows: int = 4) -> dict:
    table = pq.read_table(prepared / "shards").slice(0, rows).to_pydict()
    return {key: np.array(table[key], dtype=object) for key in ("image", "label", "image_id")}


def test_preprocess_outputs_uint8_nchw(small_prepared):
    batch = _batch(small_prepared)
    out = Preprocess(48)(batch)
    assert out["image"].shape == (4, 3, 48, 48) and out["image"].dtype == np.uint8
    assert out["label"].dtype == np.int64
    assert np.array_equal(out["image"], Preprocess(48)(batch)["image"])  # evaluation is deterministic
    augmented = Preprocess(48, augment="standard")(batch)
    assert augmented["image"].shape == out["image"].shape
    assert not np.array_equal(augmented["image"], out["image"])


def test_augmentation_is_seeded(small_prepared):
    batch = _batch(small_prepared)
    first = Preprocess(48, "standard", seed=3)(batch)["image"]
    assert np.array_equal(first, Preprocess(48, "standard", seed=3)(batch)["image"])
    assert not np.array_equal(first, Preprocess(48, "standard", seed=4)(batch)["image"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown augment preset"):
        Preprocess(32, augment="heavy")({"image": np.array([b""], dtype=object), "label": [0]})


def test_ray_datasets_split_by_fold(ray_local, small_prepared):
    datasets = build_datasets(small_prepared, 1, 32, "standard", "oversample")
    val = list(datasets["val"].iter_batches(batch_size=100))
    assert sum(len(b["label"]) for b in val) == 10
    train = np.concatenate([b["label"] for b in datasets["train"].iter_batches(batch_size=100)])
    assert len(train) == 30 and np.bincount(train).tolist() == [15, 15]
    first = datasets["train"].take_batch(4)
    assert first["image"].shape == (4, 3, 32, 32)


def test_the_test_fold_is_neither_trained_nor_validated_on(ray_local, small_prepared):
    datasets = build_datasets(small_prepared, 1, 32, "none", "none", test_fold=2)
    train = datasets["train"].take_all()
    assert len(train) == 20 and len(datasets["val"].take_all()) == 10  # folds 0 and 3; fold 1
    manifest = read_manifest(small_prepared)
    assert sum(train_class_counts(manifest, 1, test_fold=2).values()) == 20


def _epochs(dataset, count: int) -> list[np.ndarray]:
    return [np.concatenate([b["image"] for b in dataset.iter_batches(batch_size=100)]) for _ in range(count)]


def test_seeded_pipeline_repeats_across_runs_and_varies_across_epochs(ray_local, small_prepared, monkeypatch):
    monkeypatch.setattr(pipeline, "ROWS_PER_BLOCK", 8)  # several blocks, each with its own draw
    one = _epochs(build_datasets(small_prepared, 1, 32, "standard", "none", seed=7)["train"], 2)
    two = _epochs(build_datasets(small_prepared, 1, 32, "standard", "none", seed=7)["train"], 2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))  # same seed, same run
    assert not np.array_equal(one[0], one[1])  # a new draw every epoch


def test_a_copy_for_an_epoch_draws_that_epochs_images_while_another_epoch_runs(
    ray_local, small_prepared, monkeypatch
):
    monkeypatch.setattr(pipeline, "ROWS_PER_BLOCK", 8)  # several blocks, each with its own draw

    def train():
        return build_datasets(small_prepared, 1, 32, "standard", "oversample", seed=7)["train"]

    in_turn = _epochs(train(), 3)
    dataset = train()
    first = iter(for_epoch(dataset, 0).iter_batches(batch_size=8))
    head = next(first)  # epoch 0's execution has started
    assert np.array_equal(_epochs(for_epoch(dataset, 2), 1)[0], in_turn[2])
    assert np.array_equal(np.concatenate([head["image"], *(b["image"] for b in first)]), in_turn[0])
    assert dataset.context._execution_idx == 0  # the copies counted on their own
    assert np.array_equal(_epochs(dataset, 1)[0], in_turn[0])


def test_rows_held_in_memory_give_the_same_epochs_as_the_files(ray_local, small_prepared, monkeypatch):
    monkeypatch.setattr(pipeline, "ROWS_PER_BLOCK", 8)  # several blocks, each with its own draw
    manifest = read_manifest(small_prepared)
    rows = shared_rows(str(small_prepared), with_source=False, shard_bytes=1)
    assert rows is not None and rows.count() == 40
    held = build_datasets(rows, 1, 32, "standard", "oversample", seed=7, manifest=manifest)
    files = build_datasets(small_prepared, 1, 32, "standard", "oversample", seed=7)
    for name in ("train", "val"):
        pairs = zip(_epochs(held[name], 2), _epochs(files[name], 2), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs), name
    with pytest.raises(ValueError, match="manifest"):
        build_datasets(rows, 1, 32, "standard", "oversample")


def test_rows_held_only_within_a_quarter_of_the_object_store(ray_local, small_prepared):
    store = min(node["Resources"]["object_store_memory"] for node in ray_local.nodes() if node["Alive"])
    assert shared_rows(str(small_prepared), with_source=False, shard_bytes=int(0.26 * store)) is None
    held = shared_rows(str(small_prepared), with_source=True, shard_bytes=int(0.24 * store))
    assert held is not None and "source" in held.columns()


def _epoch(dataset, epoch: int) -> np.ndarray:
    return np.concatenate([b["image"] for b in for_epoch(dataset, epoch).iter_batches(batch_size=100)])


def test_splits_cut_once_for_a_sweep_give_the_same_epochs_as_rows_cut_every_epoch(
    ray_local, small_prepared, monkeypatch
):
    monkeypatch.setattr(pipeline, "ROWS_PER_BLOCK", 8)  # several blocks, each with its own draw
    manifest = read_manifest(small_prepared)
    rows = shared_rows(str(small_prepared), with_source=False, shard_bytes=1)
    splits = held_splits(rows, [(1, ""), (3, "")], test_fold=2, shard_bytes=1)
    assert splits is not None and list(splits) == [(1, ""), (3, "")]
    assert [part.count() for part in splits[(1, "")]] == [20, 10]  # folds 0 and 3; fold 1
    # Ray Train workers count epochs by executions (for_epoch sets the count itself)
    assert all(part.context._execution_idx == 0 for pair in splits.values() for part in pair)
    for val_fold in (1, 3):
        args = {"size": 32, "augment": "standard", "balance": "oversample", "seed": 7, "test_fold": 2}
        held = build_datasets(splits[(val_fold, "")], val_fold, manifest=manifest, **args)
        cut = build_datasets(rows, val_fold, manifest=manifest, **args)
        for name, epochs in (("train", (0, 1)), ("val", (0,))):
            for epoch in epochs:
                assert np.array_equal(_epoch(held[name], epoch), _epoch(cut[name], epoch)), (val_fold, name)
        assert not np.array_equal(_epoch(held["train"], 0), _epoch(held["train"], 1))


def test_splits_held_only_when_together_they_fit_a_quarter_of_the_object_store(ray_local, small_prepared):
    rows = shared_rows(str(small_prepared), with_source=False, shard_bytes=1)
    shard_bytes = int(0.13 * pipeline.store_capacity())
    assert held_splits(rows, [(0, ""), (1, "")], None, shard_bytes) is None
    assert list(held_splits(rows, [(0, "")], None, shard_bytes)) == [(0, "")]


def test_epochs_come_in_blocks_small_enough_to_decode_on_every_core(ray_local, small_prepared, monkeypatch):
    # one block is decoded by one task: the 40 rows of one shard, read as one block, kept a 16-core
    # machine's decoding on one core (546 images/s for a GPU that trains 4300)
    monkeypatch.setattr(pipeline, "ROWS_PER_BLOCK", 8)
    datasets = build_datasets(small_prepared, 1, 32, "none", "none")
    for name, rows in (("train", 30), ("val", 10)):
        blocks = [len(block["label"]) for block in datasets[name].iter_batches(batch_size=None)]
        assert blocks == [8] * (rows // 8) + [rows % 8], (name, blocks)


def test_a_local_folders_shards_are_read_in_rays_order_without_hidden_files(tmp_path, small_prepared):
    shutil.copytree(small_prepared, tmp_path / "copy")
    shards = tmp_path / "copy" / SHARDS
    shutil.copy(shards / "part-00000.parquet", shards / "part-00001.parquet")
    (shards / "._part-00000.parquet").write_bytes(b"\x00\x05\x16\x07 resource fork")  # a macOS copy's
    names = [path.name for path in shard_files(tmp_path / "copy")]
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    for path in shards.glob("*"):
        path.unlink()
    with pytest.raises(UserError, match="prepare the data again"):
        shard_files(tmp_path / "copy")
