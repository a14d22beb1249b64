"""Epochs whose batches are made ahead of the training that takes them.

A Ray Data pass starts with a wait: the pipeline starts up, and the local shuffle buffer fills
before the first batch comes out (on a small dataset, the whole epoch is made first). `EpochsAhead`
makes each epoch's batches in a thread of their own, up to `depth` batches ahead of the training,
and starts the next epoch's as soon as this one's are all made: the wait falls while the model
trains on the last batches and validates. The first epoch's start while the model is built.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

_END = object()  # a producer made all of its epoch's batches
_POLL_S = 0.1  # how often a producer blocked on a full queue checks whether it was stopped
# How long a stop waits for a producer to end. One that waits on Ray Data for a batch (a shuffle
# buffer filling, files being opened) ends when the batch comes, and closes Ray's iterator then: a
# daemon thread, it does not hold up a trial stopped by its scheduler, which Tune must end within
# seconds to hand the process to the next trial.
_STOP_WAIT_S = 0.5


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Producer:
    """One epoch's batches, made in a daemon thread into a queue of `depth`."""

    def __init__(self, batches: Callable[[], Iterable], depth: int, done: Callable[[], None]) -> None:
        self._batches, self._done = batches, done
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch-batches", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        iterator = None
        try:
            iterator = iter(self._batches())
            for batch in iterator:
                if not self._put(batch):
                    return
            finished = self._put(_END)
        except BaseException as err:  # the consumer raises it
            self._put(_Failed(err))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: ends Ray Data's execution when stopped early
                try:
                    close()
                except Exception as err:  # the batches were made: training goes on
                    log.warning("closing an epoch's batch iterator failed: %s", err)
        if finished:
            self._done()

    def _put(self, item: Any) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def stop(self) -> None:
        self._stopped.set()
        while True:  # the batches it made are let go (on a GPU, their memory)
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=_STOP_WAIT_S)


class EpochsAhead:
    """`for epoch, batches in EpochsAhead(make, epochs)`: `make(epoch)` gives an epoch's iterable of
    batches; it is called in a producer thread, epochs in order, never two at a time. Use it as a
    context manager (or call `close`): a loop left early stops the threads still producing."""

    def __init__(self, make: Callable[[int], Iterable], epochs: Iterable[int], depth: int = 4) -> None:
        self._make, self._epochs, self._depth = make, list(epochs), depth
        self._producers: dict[int, _Producer] = {}
        self._lock = threading.Lock()
        self._closed = False
        if self._epochs:
            self._start(0)

    def _start(self, index: int) -> None:
        with self._lock:
            if self._closed or index >= len(self._epochs):
                return
            epoch = self._epochs[index]
            self._producers[epoch] = _Producer(
                lambda: self._make(epoch), self._depth, done=lambda: self._start(index + 1)
            )

    def __iter__(self) -> Iterator[tuple[int, Iterator]]:
        for epoch in self._epochs:
            with self._lock:
                producer = self._producers.get(epoch)
            if producer is None:  # the previous epoch's producer failed, and its error was not raised
                raise RuntimeError(f"epoch {epoch}'s batches were never started")
            yield epoch, iter(producer)
            producer.stop()  # done: it made its last batch, or the loop took fewer
            with self._lock:
                self._producers.pop(epoch, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            producers = list(self._producers.values())
            self._producers.clear()
        for producer in producers:
            producer.stop()

    def __enter__(self) -> EpochsAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
