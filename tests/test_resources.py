"""How many trials share a machine, and GPU requests a machine cannot meet."""

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
