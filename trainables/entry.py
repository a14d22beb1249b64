"""What Ray Train starts each worker with. The train loop (torch, timm) is imported when the worker
runs it: the processes that only pass this function on (a trial's actor) never import it."""

from __future__ import annotations

from typing import Any


def train_loop_per_worker(train_loop_config: dict[str, Any]) -> None:
    from trainables.train_loop import train_loop_per_worker as loop

    loop(train_loop_config)
