"""How many trials share a machine, GPU requests a machine cannot meet, and how the workers of a
local instance run: at the driver's priority, keeping their large tensors' memory between steps."""

import resource
import statistics
import sys

import pytest
import ray

from orchestrator.config import parse_spec
from orchestrator.driver import check_gpus, concurrent_trials
from orchestrator.errors import UserError
from tests.helpers import spec_dict


def spec(**resources):
    return parse_spec(spec_dict("r", search={"backbone": "resnet18"}, resources=resources))


@pytest.fixture
def cluster(monkeypatch):
    def set_resources(**resources):
        monkeypatch.setattr(ray, "cluster_resources", lambda: resources)

    return set_resources


def test_gpu_trials_per_box_follow_the_gpus(cluster):
    cluster(CPU=16, GPU=2)
    assert concurrent_trials(spec(gpus_per_worker=0.5)) == 4  # 2 GPUs / 0.5
    assert concurrent_trials(spec(gpus_per_worker=1, workers_per_trial=2)) == 1
    assert concurrent_trials(spec(gpus_per_worker=0.25, cpus_per_worker=4)) == 3  # CPUs bind first
    assert concurrent_trials(spec(gpus_per_worker=0.5, max_concurrent_trials=2)) == 2


def test_cpu_trials_leave_a_cpu_for_ray_data(cluster):
    cluster(CPU=2)
    assert concurrent_trials(spec()) == 1
    cluster(CPU=8)
    assert concurrent_trials(spec(cpus_per_worker=0.5, workers_per_trial=2)) == 4


def test_asking_for_gpus_without_any(cluster):
    cluster(CPU=2)
    with pytest.raises(UserError, match="resources.gpus_per_worker=0"):
        check_gpus(spec(gpus_per_worker=1), local=True)
    check_gpus(spec(gpus_per_worker=1), local=False)  # a cluster may still add GPU nodes
    check_gpus(spec(), local=True)


def test_torch_threads_default_to_the_workers_cpus_and_their_share_of_ray_datas():
    assert spec(cpus_per_worker=1).resources.torch_threads == 2
    assert spec(cpus_per_worker=1.5).resources.torch_threads == 2
    assert spec(cpus_per_worker=1, workers_per_trial=2).resources.torch_threads == 1
    assert spec(cpus_per_worker=0.5, workers_per_trial=4).resources.torch_threads == 1
    assert spec(cpus_per_worker=4, workers_per_trial=2).resources.torch_threads == 4
    assert spec(cpus_per_worker=1, threads_per_worker=2).resources.torch_threads == 2


def test_workers_of_the_local_instance_run_at_the_drivers_priority(ray_local):
    @ray.remote(num_cpus=0)
    def niceness() -> int:
        import os

        return os.getpriority(os.PRIO_PROCESS, 0)

    assert ray.get(niceness.remote()) == 0  # Ray's default is 15


@pytest.mark.skipif(sys.platform != "linux", reason="the settings are glibc's")
def test_workers_of_the_local_instance_keep_a_steps_tensors_memory_for_the_next_step(ray_local):
    sizes_mb, steps, settled = (40, 48, 56, 64), 12, 5  # each over glibc's largest own mmap threshold

    @ray.remote(num_cpus=0)
    def faults_per_step() -> float:
        """Minor page faults per step of a loop run in a thread, as Tune runs a trial's: each step
        writes its activations in order and frees them in reverse, as backward does. The median of
        the last `settled` steps: the heap takes a few steps to settle into their shape."""
        import resource
        import threading

        import torch

        counts: list[int] = []

        def loop() -> None:
            for _ in range(steps):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                kept = [torch.empty(size * 1024**2, dtype=torch.uint8).fill_(1) for size in sizes_mb]
                while kept:
                    kept.pop()
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

        thread = threading.Thread(target=loop)
        thread.start()
        thread.join()
        return statistics.median(counts[-settled:])

    pages = sum(sizes_mb) * 1024**2 / resource.getpagesize()
    faults = ray.get(faults_per_step.remote())
    # with glibc's defaults each tensor is mapped at its allocation: every step faults every page
    assert faults < 0.05 * pages, f"{faults:.0f} page faults a step that writes {pages:.0f} pages"


def test_a_parquet_read_on_the_local_instance_starts_one_footer_reader(ray_local, small_prepared):
    from ray.util.state import list_actors

    from orchestrator.data.pipeline import read_rows

    here = ray.get_runtime_context().gcs_address

    def footer_readers() -> int:  # the ones ended too
        return len(list_actors(address=here, filters=[("class_name", "=", "FooterReader")], limit=10_000))

    before = footer_readers()
    assert read_rows(small_prepared).materialize().count() == 40
    assert footer_readers() - before == 1  # Ray Data's default: a pool of 32 actors for each read
