"""Shared fixtures: real images (the bundled sample, and ../shared/data when present), a small
prepared dataset, and one local Ray instance for the whole session."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    return copy_subset(tmp_path_factory.mktemp("source"), per_class=20)


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory, small_source) -> Path:
    from orchestrator.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "small"
    prepare(small_source, out, image_size=64, folds=4, seed=0, workers=1)
    return out


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # the dashboard stays on: without it a trial stopped by ASHA never gives its CPU back
    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
