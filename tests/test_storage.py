"""Storage: local folders and S3 (a real S3 API on loopback), atomic writes, clear errors."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.errors import UserError
from orchestrator.storage import Storage, StorageError, local_copy, normalise
from orchestrator.tuning import leaderboard
from tests.helpers import ROOT, checkpoint_meta, free_port
from trainables.storage import ray_storage


def test_storage_forms(tmp_path):
    assert normalise("runs", tmp_path) == str(tmp_path / "runs")
    assert normalise(f"file://{tmp_path}/runs/", Path("/elsewhere")) == str(tmp_path / "runs")
    assert normalise("s3://bucket/runs/", tmp_path) == "s3://bucket/runs"
    assert normalise("gs://bucket/runs", tmp_path) == "gs://bucket/runs"
    with pytest.raises(UserError, match="unknown scheme 'hdfs://'"):
        normalise("hdfs://namenode/runs", tmp_path)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB filesystem (tmpfs), to fill up for real."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_leaves_the_leaderboard_whole(tiny_disk):
    out = Storage(str(tiny_disk))
    small = pd.DataFrame({"trial_id": ["a", "b"], "best_val_auc": [0.9, 0.8]})
    leaderboard.write(small, out)
    before = (tiny_disk / "leaderboard.csv").read_bytes()
    with contextlib.suppress(OSError), (tiny_disk / "filler").open("wb") as filler:
        while True:  # fill the disk to the last block
            filler.write(b"\0" * 4096)
            filler.flush()
    (tiny_disk / "filler").write_bytes((tiny_disk / "filler").read_bytes()[:-8192])  # leave 8 KiB
    large = pd.DataFrame({"trial_id": [f"trial-{i}" for i in range(2000)], "best_val_auc": 0.5})
    with pytest.raises(StorageError, match="no space left on the device"):
        leaderboard.write(large, out)
    assert (tiny_disk / "leaderboard.csv").read_bytes() == before  # the old one, whole
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "leaderboard.csv", "leaderboard.md"]


def test_s3_storage_round_trip(s3_server, monkeypatch, tmp_path):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("round-trip")
    runs = Storage(f"s3://{bucket}/runs")
    runs.check_writable()
    assert runs.listdir() == []  # the write check leaves nothing behind
    folder = tmp_path / "checkpoint_000001"
    (folder / "sub").mkdir(parents=True)
    meta = checkpoint_meta(metrics={"epoch": 1}, files={"sub/model.safetensors": 1000})
    (folder / "meta.json").write_text(meta.to_json())
    (folder / "sub" / "model.safetensors").write_bytes(b"\1" * 1000)
    runs.upload(folder, "run-1/checkpoints/t1/checkpoint_000001")
    runs.write_atomic("run-1/leaderboard.csv", b"rank,trial_id\n1,t1\n")
    assert runs.listdir() == ["run-1"]
    assert runs.child("run-1").files() == [
        "checkpoints/t1/checkpoint_000001/meta.json",
        "checkpoints/t1/checkpoint_000001/sub/model.safetensors",
        "leaderboard.csv",
    ]
    assert runs.read_text("run-1/leaderboard.csv").endswith("1,t1\n")
    copy = local_copy(f"s3://{bucket}/runs/run-1/checkpoints/t1/checkpoint_000001", tmp_path / "cache")
    assert (copy / "sub" / "model.safetensors").read_bytes() == b"\1" * 1000
    assert copy == tmp_path / "cache" / bucket / "runs/run-1/checkpoints/t1/checkpoint_000001"
    kept = leaderboard.checkpoint_metas(runs.child("run-1").child("checkpoints"))
    assert kept == {"t1": [(f"s3://{bucket}/runs/run-1/checkpoints/t1/checkpoint_000001", {"epoch": 1})]}


def test_missing_bucket_and_unreachable_s3_are_named(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        StorageError, match="cannot write s3://no-such-bucket/runs/.*(NO_SUCH_BUCKET|does not exist)"
    ):
        Storage("s3://no-such-bucket/runs").check_writable()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    start = time.monotonic()
    with pytest.raises(StorageError, match="cannot write s3://bucket/runs/.*connect"):
        Storage("s3://bucket/runs").check_writable()
    # AWS's standard retries, not the 6 s of retrying a refused connection that `from_uri` gives
    assert time.monotonic() - start < 5


def test_ray_tune_and_train_get_the_storages_own_filesystem(s3_server, monkeypatch, tmp_path):
    assert ray_storage(str(tmp_path)) == (str(tmp_path), None)  # a folder: Ray's own handling
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("raystorage")
    path, fs = ray_storage(f"s3://{bucket}/runs")  # the endpoint and credentials of the environment
    with fs.open_output_stream(f"{path}/result.json") as stream:
        stream.write(b"{}")
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/result.json")["Body"].read()
    assert body == b"{}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    path, fs = ray_storage("s3://bucket/runs/run-1")
    assert path == "bucket/runs/run-1"  # in the filesystem, as Ray takes it with one
    start = time.monotonic()
    with pytest.raises(OSError, match="connect"):
        fs.get_file_info(path)
    assert time.monotonic() - start < 5  # the retries of `Storage`'s, above


def test_sweep_stops_before_any_work_when_storage_is_unreachable(s3_server, tmp_path):
    env = {**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.sweep",
            "--storage",
            "s3://bucket/runs",
            "--set",
            "data.cache=" + str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write s3://bucket/runs/") and "connect" in last
    assert list(tmp_path.iterdir()) == []  # nothing prepared, no Ray started


def test_newest_complete_checkpoint_skips_one_cut_short(tmp_path):
    import torch

    from trainables.checkpoint import newest_complete, save_checkpoint

    model = torch.nn.Linear(4, 2)
    for epoch in (1, 2, 3):
        folder = tmp_path / f"checkpoint_{epoch}"
        folder.mkdir()
        torch.save({"optimizer": {}}, folder / "training_state.pt")
        save_checkpoint(folder, model, checkpoint_meta(metrics={"epoch": epoch}))
    weights = tmp_path / "checkpoint_3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # the copy of epoch 3 was cut short
    (tmp_path / "checkpoint_4").mkdir()
    (tmp_path / "checkpoint_4" / "meta.json").write_text('{"metrics": {"epo')  # so was epoch 4's meta
    assert newest_complete(str(tmp_path)) == (2, str(tmp_path / "checkpoint_2"))
    assert newest_complete(str(tmp_path / "nothing-here")) is None


def test_prepared_dataset_from_s3_is_downloaded_once(s3_server, monkeypatch, tmp_path, small_prepared):
    from orchestrator.driver import local_prepared

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("datasets")
    remote = Storage(f"s3://{bucket}/prepared/small")
    remote.upload(small_prepared)
    copy = local_prepared(remote.uri, tmp_path / "cache")
    assert copy.parent == tmp_path / "cache" / "remote" / bucket / "prepared"
    assert copy.name.startswith("small-")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == sorted(
        p.relative_to(small_prepared) for p in small_prepared.rglob("*")
    )
    shard = next(copy.glob("shards/*.parquet"))
    stamp = shard.stat().st_mtime_ns
    assert local_prepared(remote.uri, tmp_path / "cache") == copy and shard.stat().st_mtime_ns == stamp
    remote.write_atomic(
        "manifest.json", remote.read_text("manifest.json").replace("{", '{"changed": 1, ', 1).encode()
    )
    changed = local_prepared(remote.uri, tmp_path / "cache")  # the remote changed: fetched again,
    assert '"changed": 1' in (changed / "manifest.json").read_text()
    assert '"changed": 1' not in (copy / "manifest.json").read_text()  # beside the copy, not over it
    with pytest.raises(UserError, match="is not a prepared dataset"):
        local_prepared(f"s3://{bucket}/prepared/none", tmp_path / "cache")


def test_a_download_cut_short_is_not_taken_for_a_copy(s3_server, monkeypatch, tmp_path):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("cut-short")
    remote = Storage(f"s3://{bucket}/runs/checkpoint_1")
    remote.write_atomic("model.safetensors", b"\1" * 1000)
    remote.write_atomic("meta.json", b"{}")
    remote.write_atomic(
        "meta.json/x", b"{}"
    )  # a key no local folder can hold beside the file: the copy fails
    target = tmp_path / "cache" / bucket / "runs" / "checkpoint_1"
    for _ in range(2):  # and fails again, rather than handing over what the first try left
        with pytest.raises(StorageError, match=f"cannot read s3://{bucket}/runs/checkpoint_1"):
            local_copy(remote.uri, tmp_path / "cache")
        assert not target.exists() and list(target.parent.iterdir()) == []


def test_two_datasets_of_one_folder_name_never_share_shards(s3_server, monkeypatch, tmp_path, small_source):
    from orchestrator.data.dataset_format import read_manifest
    from orchestrator.data.prepare import prepare
    from orchestrator.driver import shared_prepared

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    runs = Storage(f"s3://{s3_server.create_bucket('shared')}/runs")
    copies = []
    for rows in (10, 512):  # four shards, then one, in a folder of the same name
        prepared = tmp_path / str(rows) / "data"
        prepare(small_source, prepared, image_size=32, folds=2, workers=1, shard_rows=rows)
        copies.append(Storage(shared_prepared(runs, prepared)))
        shards = {shard.file for shard in read_manifest(prepared).shards}
        assert {f for f in copies[-1].files() if f.startswith("shards/")} == shards
    assert copies[0].uri != copies[1].uri and copies[0].uri.startswith(f"{runs.uri}/")
    assert (
        shared_prepared(runs, tmp_path / "512" / "data") == copies[1].uri
    )  # the same content: the same copy


def test_checkpoint_meta_reads_older_checkpoints_and_names_a_missing_key(tmp_path):
    from trainables.checkpoint import META_FILE, CheckpointMeta, read_meta

    older = {  # what the first versions wrote: no model, colour, threshold or file sizes
        "backbone": "resnet50",
        "weights": "hub",
        "classes": ["benign", "malignant"],
        "image_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "lr": 0.001,
        "optimizer": "adam",
        "metrics": {"epoch": 3, "val_auc": 0.9},
    }
    (tmp_path / META_FILE).write_text(json.dumps(older))
    meta = read_meta(tmp_path)
    assert (meta.model, meta.color, meta.threshold, meta.files) == ("resnet50", "none", 0.5, None)
    assert meta.resize == "squash"  # validated on square-resized images: scored that way
    assert meta.epoch == 3
    written = json.loads(meta.to_json())
    assert {key: written[key] for key in older} == older  # the same keys, the same values
    assert CheckpointMeta.from_json(meta.to_json(), "again") == meta
    del older["image_size"]
    (tmp_path / META_FILE).write_text(json.dumps(older))
    with pytest.raises(UserError, match=f"{tmp_path / META_FILE}.*'image_size'"):
        read_meta(tmp_path)
    (tmp_path / META_FILE).write_text('{"backbone": "resnet')
    with pytest.raises(UserError, match="not valid JSON"):
        read_meta(tmp_path)
