"""What the tests share besides fixtures: paths, real-image subsets, raw specs, checkpoint
metadata, free ports, a real S3 server, and the processes of a session."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "datasets" / "isic-sample"
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights"
ISIC2017 = SHARED_DATA / "isic2017-256"


def needs_shared(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not available")


def copy_subset(destination: Path, per_class: int, source: Path = SAMPLE, skip: int = 0) -> Path:
    """A folder-per-class source holding `per_class` real images of each class, after the first `skip`."""
    for name in ("benign", "malignant"):
        (destination / name).mkdir(parents=True, exist_ok=True)
        for path in sorted((source / name).glob("*.jpg"))[skip : skip + per_class]:
            shutil.copy(path, destination / name / path.name)
    return destination


def isic2017_rows(split: str = "Training") -> list[dict[str, str]]:
    """The ISIC 2017 Part 3 ground truth of `split`: image_id, melanoma, seborrheic_keratosis."""
    with (ISIC2017 / f"ISIC-2017_{split}_Part3_GroundTruth.csv").open() as handle:
        return list(csv.DictReader(handle))


def write_isic2017(
    destination: Path, rows: list[dict[str, str]], files: dict[str, Path] | None = None
) -> Path:
    """A source in the ISIC 2017 layout holding the training images of `rows` (an image id in
    `files` is a copy of that file instead) and their ground truth."""
    images = destination / "ISIC-2017_Training_Data"
    images.mkdir(parents=True)
    for row in rows:
        found = (files or {}).get(
            row["image_id"], ISIC2017 / "ISIC-2017_Training_Data" / f"{row['image_id']}.jpg"
        )
        shutil.copy(found, images / f"{row['image_id']}.jpg")
    with (destination / "ISIC-2017_Training_Part3_GroundTruth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_id", "melanoma", "seborrheic_keratosis"])
        writer.writeheader()
        writer.writerows(rows)
    return destination


def checkpoint_meta(**fields):
    """A checkpoint's meta.json content with every required field filled in; `fields` override."""
    from trainables.checkpoint import CheckpointMeta

    required = {"backbone": "test_efficientnet", "classes": ["benign", "malignant"], "image_size": 64}
    required |= {"mean": [0.5] * 3, "std": [0.5] * 3, "metrics": {}}
    return CheckpointMeta(**{**required, **fields})


def spec_dict(name: str = "t", **sections) -> dict:
    """The smallest valid raw spec (a tiny timm test model with random weights, one epoch, on a
    source that need not exist until prepared); `sections` update its sections."""
    base = {
        "data": {"source": "images"},
        "search": {"backbone": "test_efficientnet", "lr": 1e-3},
        "train": {"epochs": 1, "weights": "none"},
    }
    return updated({"name": name, **base}, sections)


def tiny_spec(root: Path, name: str, per_class: int = 24, **sections) -> dict:
    """The raw spec of the end-to-end tests: EfficientNet-Lite0 (packaged ImageNet weights) on
    `per_class` real images of each class at 64 px, 3 folds, FIFO; `sections` update its sections."""
    source = copy_subset(root / "source", per_class=per_class)
    spec = spec_dict(
        name,
        data={"source": str(source), "folds": 3, "image_size": 64, "cache": str(root / "prepared")},
        search={"backbone": "efficientnet_lite0", "batch_size": 16},
        train={"epochs": 3, "weights": "package"},
        scheduler={"type": "fifo"},
        storage=str(root / "runs"),
    )
    return updated(spec, sections)


def updated(spec: dict, sections: dict) -> dict:
    """`spec` with each of `sections` merged into its section (a mapping) or set (a value)."""
    merged = dict(spec)
    for section, values in sections.items():
        old = merged.get(section)
        merged[section] = {**old, **values} if isinstance(old, dict) and isinstance(values, dict) else values
    return merged


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


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


def session_pids(session: int) -> set[int]:
    """The processes of session `session` (Linux /proc)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):  # the process ended while we looked
            if entry.name.isdigit() and os.getsid(int(entry.name)) == session:
                pids.add(int(entry.name))
    return pids


def kill_session(session: int) -> int:
    """SIGKILL every process of a session at once, like a crashed machine; how many there were."""
    pids = session_pids(session)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


TRAIN_WORKER = "RayTrainWorker"


def own_actors(class_name: str) -> set[int]:
    """PIDs of the live actors of `class_name` of this test's own Ray instance (its state API), never
    another instance's on the same machine."""
    import ray
    from ray.util.state import list_actors

    # the address is needed: without it the state API asks the newest instance on the machine
    here = ray.get_runtime_context().gcs_address
    actors = list_actors(
        address=here, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")], detail=True
    )
    return {actor.pid for actor in actors if actor.pid}


def own_train_workers() -> set[int]:
    return own_actors(TRAIN_WORKER)


EXECUTABLE = 0o100755 << 16  # a regular file, rwxr-xr-x, as zip's external attributes hold it


def make_wheel(folder: Path, name: str, files: dict[str, bytes], executable: str = "") -> Path:
    info = f"{name}-0.1.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    wheel = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as out:
        for path, data in {**files, f"{info}/RECORD": record.encode()}.items():
            entry = zipfile.ZipInfo(path)
            entry.external_attr = EXECUTABLE if path == executable else 0o100644 << 16
            out.writestr(entry, data, zipfile.ZIP_DEFLATED)
    return wheel


def load_script(path: Path) -> ModuleType:
    """A script outside the packages (`tools/`, `benchmarks/`), imported as a module of its name."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
