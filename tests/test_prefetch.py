"""`EpochsAhead`: every batch of every epoch in order, the next epoch made ahead (never two at a time),
errors raised where the batches are taken, and nothing left running when the loop ends early."""

import threading
import time

import pytest

from trainables.prefetch import EpochsAhead

WAIT_S = 10


class Source:
    """Epochs of `size` numbered batches; records which epochs are being made at once."""

    def __init__(self, size: int = 3, fail_at: tuple[int, int] | None = None) -> None:
        self.size, self.fail_at = size, fail_at
        self.started = {epoch: threading.Event() for epoch in range(10)}
        self.closed: list[int] = []
        self.making: set[int] = set()
        self.overlaps = 0

    def __call__(self, epoch: int):
        self.started[epoch].set()
        self.overlaps += bool(self.making)
        self.making.add(epoch)
        try:
            for step in range(self.size):
                if (epoch, step) == self.fail_at:
                    raise ValueError(f"undecodable image in epoch {epoch}")
                yield (epoch, step)
        finally:
            self.making.discard(epoch)
            self.closed.append(epoch)


def test_every_batch_in_order_and_the_next_epoch_made_before_this_one_is_taken():
    source = Source()
    taken = []
    with EpochsAhead(source, range(2, 5), depth=4) as epochs:
        for epoch, batches in epochs:
            if epoch < 4:  # this epoch's 3 batches fit the queue: the next epoch starts untouched
                assert source.started[epoch + 1].wait(WAIT_S)
            taken.extend(batches)
    assert taken == [(epoch, step) for epoch in range(2, 5) for step in range(3)]
    assert source.overlaps == 0 and source.closed == [2, 3, 4]
    assert {epoch for epoch, started in source.started.items() if started.is_set()} == {2, 3, 4}


def test_the_next_epoch_waits_for_this_one_to_be_made():
    source = Source(size=6)
    with EpochsAhead(source, range(2), depth=2) as epochs:
        epoch, batches = next(iter(epochs))
        assert next(batches) == (0, 0)
        assert not source.started[1].wait(0.5)  # epoch 0 still has batches to make
        assert list(batches) == [(0, step) for step in range(1, 6)]
        assert source.started[1].wait(WAIT_S)


def test_an_error_while_making_batches_is_raised_where_they_are_taken():
    source = Source(fail_at=(1, 2))
    taken = []
    failed = pytest.raises(ValueError, match="undecodable image in epoch 1")
    with failed, EpochsAhead(source, range(3)) as epochs:
        for _, batches in epochs:
            taken.extend(batches)
    assert taken == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert not source.started[2].is_set()  # a failed epoch starts no other


def test_a_loop_left_early_stops_the_epoch_being_made():
    source = Source(size=100)
    with EpochsAhead(source, range(3), depth=2) as epochs:
        for _, batches in epochs:
            next(batches)
            break
    assert source.closed == [0]  # its generator was closed, not left blocked on a full queue
    assert not source.started[1].is_set()
    assert not [thread for thread in threading.enumerate() if thread.name == "epoch-batches"]


def test_a_stop_does_not_wait_for_a_batch_that_is_still_being_made():
    release = threading.Event()
    closed = []

    def waiting_for_data(epoch: int):
        try:
            yield (epoch, 0)
            release.wait(WAIT_S)  # a shuffle buffer filling
            yield (epoch, 1)
        finally:
            closed.append(epoch)

    epochs = EpochsAhead(waiting_for_data, range(2), depth=1)
    _, batches = next(iter(epochs))
    assert next(batches) == (0, 0)
    started = time.monotonic()
    epochs.close()
    assert time.monotonic() - started < 2  # Tune gives a stopped trial 2 s to end
    release.set()  # the batch comes: the producer ends, and closes Ray Data's iterator
    deadline = time.monotonic() + WAIT_S
    while not closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed == [0]
