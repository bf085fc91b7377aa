"""The circuit breaker of one Redis node: closed, open, half-open with one probe.

The reader keeps one per target and one per replica (`streams.read.routes`);
what counts as a failure is decided by the caller (`streams.read.nodes`,
"What is Redis's fault" in `streams.read.reader`), not here.

Why the breaker is written here
-------------------------------
Instead of taken from a library, after evaluating the two asked for:

- pybreaker (1.4.1) supports asynchronous calls only through Tornado
  coroutines, holding a `threading.RLock` across the awaited call; native
  asyncio support exists only as an unmerged pull request.
- aiobreaker (1.2.0, last released 2021) is asyncio-native, but ships no type
  information (`mypy --strict` would see `Any` everywhere), measures the open
  period with the wall clock and mixes `datetime.utcnow()` with
  `datetime.now()` (its reported reopen time is wrong outside UTC, e.g. in
  Japan), and its half-open state lets every concurrent call through: with a
  server that still hangs, each of them would pay the full timeout, the very
  thing the breaker is there to prevent.

What is needed is small: a consecutive-failure count, an open period on the
monotonic clock, and exactly one probe in flight while half-open. It is
`CircuitBreaker` below, with pure unit tests (tests/unit/test_breaker.py).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_SEVERITY: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def worst(states: Iterable[BreakerState]) -> BreakerState:
    """The most severe of `states` (open, then half-open, then closed): the one
    state a monitor shows for several breakers."""
    return max(states, key=_SEVERITY.__getitem__)


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to call Redis once; `probe` marks the one trial call of half-open."""

    probe: bool


class CircuitBreaker:
    """Closed → open after `fail_max` consecutive failures → half-open after `reset_s`.

    Not a wrapper around the call: the reader asks `acquire()` for a permit
    (None = skip Redis), makes the call itself under its own timeout, and
    reports the outcome with the permit. Only the probe's outcome moves a
    half-open breaker; outcomes of calls that started before the breaker
    opened are ignored once it is open, as they say nothing about now.
    Single-threaded by design (one event loop), so it needs no lock.
    """

    def __init__(
        self, fail_max: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if fail_max < 1 or reset_s <= 0:
            raise ValueError("fail_max must be ≥ 1 and reset_s > 0")
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.opens = 0
        """How many times the breaker has opened (a counter for monitoring)."""

    @property
    def state(self) -> BreakerState:
        """The state as of the last call; open turns half-open when a read asks."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    @property
    def blocked(self) -> bool:
        """Whether `acquire()` would say no now (without changing the state)."""
        if self._state is BreakerState.CLOSED:
            return False
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at < self.reset_s:
            return True
        return self._probing

    def acquire(self) -> Permit | None:
        """A permit to call Redis now, or None to go straight to the fallback."""
        if self._state is BreakerState.CLOSED:
            return Permit(probe=False)
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                return None
            self._state = BreakerState.HALF_OPEN
        if self._probing:
            return None  # one probe at a time: the others must not pay a timeout
        self._probing = True
        return Permit(probe=True)

    def success(self, permit: Permit) -> None:
        if permit.probe:
            self._probing = False
            self._state = BreakerState.CLOSED
            self._failures = 0
        elif self._state is BreakerState.CLOSED:
            self._failures = 0

    def failure(self, permit: Permit) -> None:
        if permit.probe:
            self._probing = False
            self._trip()
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.fail_max:
                self._trip()

    def release(self, permit: Permit) -> None:
        """The call ended without a verdict (cancelled, or not Redis's fault): another
        read may probe."""
        if permit.probe:
            self._probing = False

    def _trip(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self.opens += 1
