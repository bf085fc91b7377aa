"""The circuit breaker as a state machine (streams/read/breaker.py), on a hand-driven clock."""

from __future__ import annotations

import pytest

from streams.read.breaker import BreakerState, CircuitBreaker, worst


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def opened_by_one_failure(clock: Clock, reset_s: float = 5) -> CircuitBreaker:
    """A breaker of `fail_max` 1, opened at `clock.now` by its first read failing."""
    b = CircuitBreaker(fail_max=1, reset_s=reset_s, clock=clock)
    p = b.acquire()
    assert p is not None
    b.failure(p)
    return b


def test_breaker_opens_after_fail_max_consecutive_failures() -> None:
    b = CircuitBreaker(fail_max=3, reset_s=5, clock=Clock())
    for _ in range(2):
        p = b.acquire()
        assert p is not None and not p.probe
        b.failure(p)
    assert (b.state, b.failures) == (BreakerState.CLOSED, 2)
    p = b.acquire()
    assert p is not None
    b.success(p)  # a success in between resets the count: failures must be consecutive
    assert b.failures == 0
    for _ in range(3):
        p = b.acquire()
        assert p is not None
        b.failure(p)
    assert b.state is BreakerState.OPEN
    assert b.opens == 1
    assert b.acquire() is None


def test_breaker_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    b = opened_by_one_failure(clock)
    clock.now += 4.9
    assert b.acquire() is None
    clock.now += 0.1
    probe = b.acquire()
    assert probe is not None and probe.probe
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is None  # concurrent reads skip Redis while the probe runs
    b.success(probe)
    assert b.state is BreakerState.CLOSED
    nxt = b.acquire()
    assert nxt is not None and not nxt.probe


def test_breaker_failed_probe_reopens_for_a_full_period() -> None:
    clock = Clock()
    b = opened_by_one_failure(clock)
    clock.now += 5
    probe = b.acquire()
    assert probe is not None
    clock.now += 1
    b.failure(probe)
    assert (b.state, b.opens) == (BreakerState.OPEN, 2)
    clock.now += 4.9
    assert b.acquire() is None
    clock.now += 0.1
    assert b.acquire() is not None


def test_breaker_released_probe_frees_the_slot() -> None:
    clock = Clock()
    b = opened_by_one_failure(clock, reset_s=1)
    clock.now += 1
    probe = b.acquire()
    assert probe is not None
    b.release(probe)  # cancelled: no verdict
    assert b.state is BreakerState.HALF_OPEN
    again = b.acquire()
    assert again is not None and again.probe


def test_breaker_ignores_late_outcomes_of_calls_started_before_it_opened() -> None:
    clock = Clock()
    b = CircuitBreaker(fail_max=2, reset_s=5, clock=clock)
    early = [b.acquire() for _ in range(4)]
    assert all(p is not None for p in early)
    b.failure(early[0])  # type: ignore[arg-type]
    b.failure(early[1])  # type: ignore[arg-type]
    assert b.state is BreakerState.OPEN
    b.failure(early[2])  # type: ignore[arg-type]
    b.success(early[3])  # type: ignore[arg-type]
    assert (b.state, b.opens) == (BreakerState.OPEN, 1)
    clock.now += 5
    probe = b.acquire()
    assert probe is not None
    b.success(early[3])  # type: ignore[arg-type]  # stale, not the probe
    assert b.state is BreakerState.HALF_OPEN


def test_breaker_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(fail_max=0, reset_s=1)
    with pytest.raises(ValueError):
        CircuitBreaker(fail_max=1, reset_s=0)


def test_breaker_blocked_says_what_acquire_would_without_moving_it() -> None:
    assert not CircuitBreaker(fail_max=1, reset_s=5).blocked
    clock = Clock()
    b = opened_by_one_failure(clock)
    assert b.blocked
    clock.now += 5
    assert not b.blocked and b.state is BreakerState.OPEN  # unmoved until asked
    probe = b.acquire()
    assert probe is not None and b.blocked  # the probe is in flight
    b.release(probe)
    assert not b.blocked


def test_worst_state_is_open_then_half_open_then_closed() -> None:
    closed, half, opened = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
    assert worst([closed]) is closed
    assert worst([closed, half, closed]) is half
    assert worst([half, opened, closed]) is opened
