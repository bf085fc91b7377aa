"""The watchdog's rule: lag and no progress for stall_s, unless a dependency is down."""

from __future__ import annotations

from streams.worker.watchdog import Watchdog

TP = ("t", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stall_needs_lag_and_time_without_progress() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, clock=clock)
    assert dog.observe([TP], {TP: 100}, {TP: 49}, dependency_retrying=False) == []
    clock.now = 9
    assert dog.observe([TP], {TP: 120}, {TP: 49}, dependency_retrying=False) == []
    clock.now = 10
    (stall,) = dog.observe([TP], {TP: 130}, {TP: 49}, dependency_retrying=False)
    assert (stall.lag, stall.stuck_s) == (80, 10)


def test_progress_resets_the_clock() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, clock=clock)
    dog.observe([TP], {TP: 100}, {TP: 10}, dependency_retrying=False)
    clock.now = 8
    dog.observe([TP], {TP: 100}, {TP: 20}, dependency_retrying=False)
    clock.now = 16
    assert dog.observe([TP], {TP: 100}, {TP: 20}, dependency_retrying=False) == []


def test_no_lag_or_a_dependency_outage_is_not_a_stall() -> None:
    clock = Clock()
    dog = Watchdog(stall_s=10, clock=clock)
    dog.observe([TP], {TP: 50}, {TP: 49}, dependency_retrying=False)
    clock.now = 100
    assert dog.observe([TP], {TP: 50}, {TP: 49}, dependency_retrying=False) == []
    clock.now = 200
    assert dog.observe([TP], {TP: 90}, {TP: 49}, dependency_retrying=True) == []
    clock.now = 205
    assert dog.observe([TP], {TP: 90}, {TP: 49}, dependency_retrying=False) == []


def test_a_settled_partition_has_no_lag_until_its_end_moves() -> None:
    """A transaction marker at offset 50: the worker stored 49, the end is 51, forever."""
    clock = Clock()
    dog = Watchdog(stall_s=10, clock=clock)
    dog.observe([TP], {TP: 51}, {TP: 49}, dependency_retrying=False)
    clock.now = 10
    (stall,) = dog.observe([TP], {TP: 51}, {TP: 49}, dependency_retrying=False)
    dog.settled(TP, 51)  # Kafka had no record after 49 for a read_committed consumer
    clock.now = 30
    assert dog.observe([TP], {TP: 51}, {TP: 49}, dependency_retrying=False) == []
    # New data after the marker: lag again, and a stall if it is not processed.
    clock.now = 31
    assert dog.observe([TP], {TP: 52}, {TP: 49}, dependency_retrying=False) == []
    clock.now = 41
    (stall,) = dog.observe([TP], {TP: 52}, {TP: 49}, dependency_retrying=False)
    assert stall.lag == 2
