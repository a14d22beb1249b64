"""Where a trial's train loop runs, and what it asks of that place: its rank, its device, its
datasets, where reports and checkpoints go, and the checkpoint a restart resumes from.

- `TrainSession`: on Ray Train workers (`trainables.entry`). Several workers train one model with
  DDP; Ray Train restarts a failed worker group from its last registered checkpoint.
- `TrialSession`: in the Tune trial's own process (`train_in_trial`), for a trial of one worker.
  There is no Train controller, worker group or dataset split to start: a trial reaches its first
  step seconds sooner, and each epoch's batches are made ahead (`prefetch.py`): the next epoch's
  while this one trains, the first while the model is built. Checkpoints go to the same folder,
  kept by the same rule. Each report hands Tune a checkpoint of its own that only names the epoch's
  (`reported.json`): a restart (Tune's `FailureConfig`, or a resumed sweep) goes on from it, and
  Tune keeps the trial's results from before the restart.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
from torch import nn

from trainables.checkpoint import META_FILE, complete_checkpoints, rank
from trainables.errors import UserError
from trainables.prefetch import EpochsAhead
from trainables.storage import Storage, ray_storage
from trainables.transforms import for_epoch

REPORTED_FILE = "reported.json"  # in the Tune checkpoint of a report: the checkpoint it came with


def checkpoint_at(uri: str) -> ray.train.Checkpoint:
    """Ray's handle on a checkpoint folder, read through the storage's own filesystem (see
    `trainables.storage.ray_storage`)."""
    path, fs = ray_storage(uri)
    return ray.train.Checkpoint(path, filesystem=fs)


class Session(Protocol):
    rank: int
    world_size: int
    name: str  # the trial's name, for timing marks

    def device(self) -> torch.device: ...

    def prepare_model(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module: ...

    def dataset(self, name: str) -> Any:
        """The worker's part of dataset `name` ("train" or "val"): it has `iter_torch_batches`."""

    def epochs(
        self, name: str, epochs: Iterable[int], iter_args: Callable[[int], dict]
    ) -> AbstractContextManager[Iterable[tuple[int, Iterable]]]:
        """(epoch, its batches of dataset `name`) for each of `epochs`, the batches made with
        `iter_torch_batches(**iter_args(epoch))`."""

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        """Report one epoch; rank 0 passes the epoch's checkpoint folder, which it may remove after."""

    def registered(self) -> ray.train.Checkpoint | None:
        """The last checkpoint a report delivered, which a restart resumes from (None: start)."""


class TrainSession:
    """The loop on a Ray Train worker."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.name = context.get_experiment_name()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        ddp = {"find_unused_parameters": find_unused_parameters}
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp)

    def dataset(self, name: str) -> Any:
        return ray.train.get_dataset_shard(name)

    @contextmanager
    def epochs(
        self, name: str, epochs: Iterable[int], iter_args: Callable[[int], dict]
    ) -> Iterator[Iterable[tuple[int, Iterable]]]:
        # one pass at a time: the workers' shards of an epoch are split by one coordinator, and
        # its executions count the epochs (`transforms.current_epoch`)
        shard = self.dataset(name)
        yield ((epoch, shard.iter_torch_batches(**iter_args(epoch))) for epoch in epochs)

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None
        )

    def registered(self) -> ray.train.Checkpoint | None:
        return ray.train.get_checkpoint()


class TrialSession:
    """The loop in the Tune trial's own process: rank 0 of 1. Each checkpoint is uploaded to
    `checkpoints/checkpoint_EEEEEE` (E: the epoch) before its report, whose Tune checkpoint names it.
    The `keep` best by `metric`, and the newest, are kept; the others are removed, as Ray Train does."""

    rank, world_size = 0, 1

    def __init__(
        self,
        name: str,
        datasets: dict[str, Any],
        checkpoints: str,
        metric: str,
        mode: str,
        keep: int,
        use_gpu: bool,
    ) -> None:
        self.name, self.storage = name, Storage(checkpoints)
        self.datasets = {key: for_epoch(dataset, 0) for key, dataset in datasets.items()}
        self.metric, self.mode, self.keep = metric, mode, keep
        if use_gpu and not torch.cuda.is_available():
            raise UserError(
                f"trial {name} holds a GPU, but torch {torch.__version__} finds no CUDA device: install a "
                "CUDA build of torch on the GPU nodes, or train on CPU with --set resources.gpus_per_worker=0"
            )
        self._device = torch.device("cuda" if use_gpu else "cpu")

    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: nn.Module, find_unused_parameters: bool) -> nn.Module:
        return model.to(self._device)

    def dataset(self, name: str) -> Any:
        return self.datasets[name]

    def epochs(self, name: str, epochs: Iterable[int], iter_args: Callable[[int], dict]) -> EpochsAhead:
        """Each epoch's batches made ahead, from a copy of the dataset set to that epoch."""
        dataset = self.datasets[name]

        def batches(epoch: int) -> Iterable:
            return for_epoch(dataset, epoch).iter_torch_batches(**iter_args(epoch))

        return EpochsAhead(batches, epochs)

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        if checkpoint is None:
            ray.tune.report(metrics)
            return
        name = f"checkpoint_{int(metrics['epoch']):06d}"
        self.storage.delete_folder(name)  # a copy cut short by an earlier attempt at this epoch
        self.storage.upload(checkpoint, name, last=META_FILE)  # meta.json marks it as a checkpoint
        try:
            with tempfile.TemporaryDirectory() as pointer:
                Path(pointer, REPORTED_FILE).write_text(json.dumps({"checkpoint": name}))
                # returns once Tune has stored the pointer and taken the result
                ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(pointer))
        finally:  # also when the scheduler stops the trial: Tune ends it from inside the report
            self._remove_all_but_the_kept(newest=name)

    def registered(self) -> ray.train.Checkpoint | None:
        """None too when the checkpoint the pointer names is gone (removed as no longer among the
        kept): the newest complete one is taken then."""
        pointer = ray.tune.get_checkpoint()
        if pointer is None:
            return None
        with pointer.as_directory() as folder:
            name = json.loads(Path(folder, REPORTED_FILE).read_text())["checkpoint"]
        if not self.storage.exists(f"{name}/{META_FILE}"):
            return None
        return checkpoint_at(self.storage.uri_of(name))

    def _remove_all_but_the_kept(self, newest: str) -> None:
        ranked = sorted(
            complete_checkpoints(self.storage),
            key=lambda found: rank(found[1].metrics, self.metric, self.mode),
            reverse=True,
        )
        for folder, _ in ranked[self.keep :]:
            if folder != newest:
                self.storage.delete_folder(folder)
