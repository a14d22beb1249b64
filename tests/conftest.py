"""Shared fixtures: real images (the bundled sample, and ../shared/data when present), a small
prepared dataset, and one local Ray instance for the whole session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "datasets" / "isic-sample"
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights"

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def needs_shared(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not available")


def copy_subset(destination: Path, per_class: int, source: Path = SAMPLE, skip: int = 0) -> Path:
    """A folder-per-class source holding `per_class` real images of each class, after the first `skip`."""
    for name in ("benign", "malignant"):
        (destination / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / name).glob("*.jpg"))[skip : skip + per_class]:
            shutil.copy(path, destination / name / path.name)
    return destination


def checkpoint_meta(**fields):
    """A checkpoint's meta.json content with every required field filled in; `fields` override."""
    from trainables.checkpoint import CheckpointMeta

    required = {"backbone": "test_efficientnet", "classes": ["benign", "malignant"], "image_size": 64}
    required |= {"mean": [0.5] * 3, "std": [0.5] * 3, "metrics": {}}
    return CheckpointMeta(**{**required, **fields})


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    return copy_subset(tmp_path_factory.mktemp("source"), per_class=20)


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory, small_source) -> Path:
    from orchestrator.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "small"
    prepare(small_source, out, image_size=64, folds=4, seed=0, workers=1)
    return out


def tiny_spec(root: Path, name: str, per_class: int = 24, **sections: dict) -> dict:
    """The raw spec of the end-to-end tests: EfficientNet-Lite0 (packaged ImageNet weights) on
    `per_class` real images of each class at 64 px, 3 folds, FIFO; `sections` update its sections."""
    spec: dict = {
        "name": name,
        "data": {
            "source": str(copy_subset(root / "source", per_class=per_class)),
            "folds": 3,
            "image_size": 64,
            "cache": str(root / "prepared"),
        },
        "search": {"backbone": "efficientnet_lite0", "lr": 1e-3, "batch_size": 16},
        "train": {"epochs": 3, "weights": "package"},
        "scheduler": {"type": "fifo"},
        "storage": str(root / "runs"),
    }
    for section, values in sections.items():
        spec[section] = {**spec.get(section, {}), **values}
    return spec


def pids_with(marker: bytes) -> set[int]:
    """Processes whose command line contains `marker` (Linux /proc)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue  # the process ended while we looked
    return pids


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # the dashboard stays on: without it a trial stopped by ASHA never gives its CPU back
    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def without_local_ray():
    """For a test that starts Ray clusters of its own: the session's instance is shut down while it
    runs (two clusters on two CPUs starve each other), and started again after it."""
    import ray

    was_running = ray.is_initialized()
    ray.shutdown()
    yield
    ray.shutdown()
    if was_running:
        ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)


@dataclass
class S3Server:
    """A real S3 API (moto's server) on loopback; `env` points AWS clients at it."""

    url: str
    env: dict[str, str]
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, stopped on exit (or by `server.stop()`)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "moto's S3 server did not start"
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield S3Server(env["AWS_ENDPOINT_URL"], env, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    with running_s3_server() as server:
        yield server
