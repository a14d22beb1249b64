"""Where the train loop is entered: `train_loop_per_worker` on each Ray Train worker, `train_in_trial`
in a Tune trial's own process (`session.py`). The loop (torch, timm) is imported when it runs: the
processes that only pass these functions on (a Ray Train trial's actor) never import it."""

from __future__ import annotations

from typing import Any

import ray.train


def train_loop_per_worker(train_loop_config: dict[str, Any]) -> None:
    # Asking for the shard first starts Ray Data's split coordinator (a process of its own) while
    # this one imports the loop and builds the model; the loop gets the same shard again.
    ray.train.get_dataset_shard("train")
    from trainables.session import TrainSession
    from trainables.train_loop import train_loop

    train_loop(train_loop_config, TrainSession())


def train_in_trial(
    train_loop_config: dict[str, Any],
    datasets: dict[str, Any],
    name: str,
    kept: tuple[str, str, int],
    use_gpu: bool,
) -> None:
    """Train in this (a Tune trial's) process; `kept`: (metric, mode, how many) of the checkpoints
    that are kept, the newest aside."""
    from trainables.session import TrialSession
    from trainables.train_loop import train_loop

    session = TrialSession(name, datasets, train_loop_config["checkpoints"], *kept, use_gpu=use_gpu)
    try:
        train_loop(train_loop_config, session)
    finally:
        if use_gpu:  # the process goes on to the next trial: it gets the GPU memory back
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()
