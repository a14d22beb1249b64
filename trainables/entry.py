"""What Ray Train starts each worker with. The train loop (torch, timm) is imported when the worker
runs it: the processes that only pass this function on (a trial's actor) never import it."""

from __future__ import annotations

from typing import Any

import ray.train


def train_loop_per_worker(train_loop_config: dict[str, Any]) -> None:
    # Asking for the shard first starts Ray Data's split coordinator (a process of its own) while
    # this one imports the loop and builds the model; the loop gets the same shard again.
    ray.train.get_dataset_shard("train")
    from trainables.train_loop import train_loop_per_worker as loop

    loop(train_loop_config)
