"""A sweep on a multi-node Ray cluster simulated in one machine (`ray.cluster_utils.Cluster`):
trials run on different nodes, and when a node is removed mid-sweep the trials it held resume
from their last checkpoints on the nodes left."""

import contextlib
import json
import threading
import time
from pathlib import Path

import pytest

from orchestrator.config import parse_spec
from orchestrator.driver import run_sweep
from tests.helpers import tiny_spec

pytestmark = pytest.mark.slow

OBJECT_STORE = 100 * 1024**2


def checkpoints_by_trial(storage: Path) -> dict[str, list[dict]]:
    """Each trial's complete checkpoints' metas (epoch, node, resumed_after_epoch), oldest first."""
    found: dict[str, list[dict]] = {}
    for meta_path in sorted(storage.glob("*/checkpoints/*/checkpoint_*/meta.json")):
        with contextlib.suppress(ValueError, OSError):  # being written
            meta = json.loads(meta_path.read_text())
            files = meta["files"].items()
            if all((meta_path.parent / name).stat().st_size == size for name, size in files):
                found.setdefault(meta_path.parent.parent.name, []).append(meta)
    return found


def remove_a_training_node(cluster, storage: Path, seen: dict, epochs: int, timeout_s: float = 300) -> None:
    """Once a trial has a complete checkpoint from a worker node and epochs to go, remove that node
    (the trial is then in its next epoch); record which trial it was and after which epoch."""
    deadline = time.monotonic() + timeout_s
    by_id = {node.node_id: node for node in cluster.worker_nodes}
    while time.monotonic() < deadline:
        for trial, metas in checkpoints_by_trial(storage).items():
            last = metas[-1]
            if last["node_id"] in by_id and last["metrics"]["epoch"] < epochs:
                cluster.remove_node(by_id[last["node_id"]])
                seen.update(trial=trial, node=last["node_id"], after_epoch=last["metrics"]["epoch"])
                seen["at"] = time.strftime("%H:%M:%S")
                return
        time.sleep(0.2)


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
        tiny_spec(
            tmp_path,
            "nodes",
            search={"lr": [1e-3, 3e-4], "optimizer": ["adam", "sgd"], "batch_size": 32},
            train={"max_failures": 3},
        )
    )
    seen: dict = {}
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        killer = threading.Thread(target=remove_a_training_node, args=(cluster, storage, seen, 3))
        killer.start()
        run_dir, frame = run_sweep(spec, address=cluster.address)
        killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert "trial" in seen, "no node was removed"
    assert len(frame) == 4 and set(frame["status"]) == {"completed"}, frame.to_dict("records")
    assert set(frame["epochs_run"]) == {3}
    kept = checkpoints_by_trial(storage)
    nodes = {meta["node_id"] for metas in kept.values() for meta in metas}
    assert len(nodes) >= 2  # trials trained on several nodes
    hit = kept[seen["trial"]]
    # the removed node's trial went on from the epoch it had checkpointed, on another node
    final = next(meta for meta in hit if meta["metrics"]["epoch"] == 3)
    assert final["resumed_after_epoch"] == seen["after_epoch"], (seen, hit)
    assert final["node_id"] != seen["node"]
    retrained = 0
    for trial in frame["trial_id"]:
        reports = [json.loads(line) for line in (run_dir / trial / "result.json").read_text().splitlines()]
        assert 3 in [report["epoch"] for report in reports]
        # no epoch trained twice. An epoch may be reported twice when the node went away between
        # Tune taking its result and registering its checkpoint: the restarted trial reports that
        # checkpoint's stored metrics again, the same numbers (a retrained epoch measures its own speed)
        first: dict[int, tuple] = {}
        for report in reports:
            measured = (report["train_images_per_s"], report["val_auc"])
            retrained += first.setdefault(report["epoch"], measured) != measured
    assert retrained == 0
    print(
        f"removed node {seen['node'][:8]} at {seen['at']} while trial {seen['trial']} was in epoch "
        f"{seen['after_epoch'] + 1}; it resumed after epoch {final['resumed_after_epoch']} on node "
        f"{final['node_id'][:8]}; nodes that trained: {len(nodes)}; "
        f"leaderboard rows: {len(frame)}"
    )
