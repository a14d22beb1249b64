"""A sweep on a multi-node Ray cluster simulated in one machine (`ray.cluster_utils.Cluster`):
trials run on different nodes, and when a node is removed mid-sweep the trials it held resume
from their last checkpoints on the nodes left."""

import json
import threading
import time
from pathlib import Path

import pytest

from orchestrator.config import parse_spec
from orchestrator.sweep import run_sweep
from tests.conftest import copy_subset

pytestmark = pytest.mark.slow

OBJECT_STORE = 100 * 1024**2


def train_workers() -> list[dict]:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [{"node_id": actor.node_id, "pid": actor.pid} for actor in alive]


def remove_a_training_node(cluster, storage: Path, seen: dict, timeout_s: float = 300) -> None:
    """Once a trial has a checkpoint, remove a worker node that runs a Train worker; record the
    nodes that ran Train workers before, and what was removed."""
    deadline = time.monotonic() + timeout_s
    by_id = {node.node_id: node for node in cluster.worker_nodes}
    while time.monotonic() < deadline:
        for worker in train_workers():
            seen.setdefault("nodes", set()).add(worker["node_id"])
        if any(storage.glob("*/checkpoints/*/checkpoint_*/meta.json")) and len(seen.get("nodes", ())) >= 2:
            victims = [node_id for node_id in seen["nodes"] if node_id in by_id]
            live = {worker["node_id"] for worker in train_workers()}
            victim = next((node_id for node_id in victims if node_id in live), None)
            if victim:
                seen["checkpoints_before"] = sorted(
                    str(p) for p in storage.glob("*/checkpoints/*/checkpoint_*")
                )
                seen["removed_at"] = time.monotonic()
                cluster.remove_node(by_id[victim])
                seen["removed"] = victim
                return
        time.sleep(0.5)


def test_node_removed_mid_sweep_its_trials_resume_elsewhere(tmp_path, without_local_ray):
    import ray
    from ray.cluster_utils import Cluster

    # a 1-CPU head (the driver, Ray Data) and three 1-CPU workers: two trials at once, whose
    # Train workers (1 CPU each) cannot share a node
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE}
    )
    for _ in range(3):
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    storage = tmp_path / "runs"
    spec = parse_spec(
        {
            "name": "nodes",
            "data": {
                "source": str(copy_subset(tmp_path / "source", per_class=24)),
                "folds": 3,
                "image_size": 64,
                "cache": str(tmp_path / "prepared"),
            },
            "search": {"backbone": "efficientnet_lite0", "lr": [1e-3, 3e-4], "optimizer": ["adam", "sgd"]},
            "train": {"epochs": 3, "weights": "package", "max_failures": 3},
            "scheduler": {"type": "fifo"},
            "storage": str(storage),
        }
    )
    seen: dict = {}
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        killer = threading.Thread(target=remove_a_training_node, args=(cluster, storage, seen))
        killer.start()
        run_dir, frame = run_sweep(spec, address=cluster.address)
        killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert len(seen["nodes"]) >= 2, seen  # trials ran on several nodes
    assert "removed" in seen, "no node was removed"
    assert len(frame) == 4 and set(frame["status"]) == {"completed"}, frame.to_dict("records")
    assert set(frame["epochs_run"]) == {3}
    resumed_after = {}
    for meta in run_dir.glob("checkpoints/*/checkpoint_*/meta.json"):
        trial, after = meta.parent.parent.name, json.loads(meta.read_text())["resumed_after_epoch"]
        resumed_after[trial] = max(after, resumed_after.get(trial, 0))
    assert max(resumed_after.values()) >= 1  # the removed node's trial went on from its checkpoint
    repeated = 0
    for trial in frame["trial_id"]:
        epochs = [
            json.loads(line)["epoch"] for line in (run_dir / trial / "result.json").read_text().splitlines()
        ]
        assert sorted(set(epochs)) == [1, 2, 3]
        repeated += len(epochs) - 3
    assert repeated <= 2  # at most the epoch in flight of each trial on the removed node
    print(
        f"Train workers ran on {len(seen['nodes'])} nodes; removed node {seen['removed'][:8]} "
        f"with {len(seen['checkpoints_before'])} checkpoints in storage; resumed after epochs "
        f"{resumed_after}; epochs reported twice: {repeated}; "
        f"leaderboard rows: {len(frame)}"
    )
