"""Fixtures: a small prepared dataset of real images, one local Ray instance of the suite's own,
and a real S3 server. Everything else the tests share is in `helpers.py`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import copy_subset, running_s3_server

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# seconds a test may take, its fixtures' set-up included (a shared Ray instance, a prepared dataset),
# before it fails as hung
FAST_LIMIT_S, SLOW_LIMIT_S = 600, 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # the tests that start Ray instances of their own run first, before the suite's instance starts:
    # each of them would otherwise stop it and start it again (8 s)
    items.sort(key=lambda item: "without_local_ray" not in getattr(item, "fixturenames", ()))
    for item in items:
        if item.get_closest_marker("timeout") is None:
            limit = SLOW_LIMIT_S if item.get_closest_marker("slow") else FAST_LIMIT_S
            item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> Path:
    return copy_subset(tmp_path_factory.mktemp("source"), per_class=20)


@pytest.fixture(scope="session")
def small_prepared(tmp_path_factory, small_source) -> Path:
    from orchestrator.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "small"
    prepare(small_source, out, image_size=64, folds=4, seed=0, workers=1)
    return out


def start_local_ray() -> None:
    """The suite's own Ray instance, set up as a sweep sets up its own (`driver.LOCAL_RAY_ENV`)."""
    import ray

    from orchestrator.driver import LOCAL_RAY_ENV

    for name, value in LOCAL_RAY_ENV.items():  # Ray's processes inherit them
        os.environ.setdefault(name, value)
    # the dashboard stays on: without it a trial stopped by ASHA never gives its CPU back; "local":
    # a new instance of the suite's own, never a cluster that `ray start` left running on the machine
    ray.init(address="local", num_cpus=2, configure_logging=False, log_to_driver=False)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    start_local_ray()
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
        start_local_ray()


@pytest.fixture(scope="session")
def s3_server():
    with running_s3_server() as server:
        yield server
