"""Connection attempts of this worker to Redis and PostgreSQL, over a sliding window.

The alert on "connection failure rate > 5 %" reads it. Every write attempt of
the pipeline counts once: a success, or a transient failure that will be
retried.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from streams.errors import is_transient

Dependency = Literal["redis", "postgres"]
T = TypeVar("T")


class ConnectionHealth:
    def __init__(self, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._attempts: deque[tuple[float, Dependency, bool]] = deque()
        self.totals: Counter[tuple[Dependency, bool]] = Counter()
        """Attempts since start by (dependency, ok): Prometheus counters need totals."""

    def record(self, dependency: Dependency, ok: bool) -> None:
        self._attempts.append((self.clock(), dependency, ok))
        self.totals[(dependency, ok)] += 1
        self._trim()

    def failure_rate(self) -> tuple[float, int]:
        """(failures / attempts, attempts) over the window, both dependencies."""
        self._trim()
        attempts = len(self._attempts)
        failures = sum(1 for _, _, ok in self._attempts if not ok)
        return (failures / attempts if attempts else 0.0), attempts

    async def track(self, dependency: Dependency, step: Callable[[], Awaitable[T]]) -> T:
        """Run one attempt of `step` and count it."""
        try:
            result = await step()
        except Exception as exc:
            if is_transient(exc):
                self.record(dependency, ok=False)
            raise
        self.record(dependency, ok=True)
        return result

    def _trim(self) -> None:
        floor = self.clock() - self.window_s
        while self._attempts and self._attempts[0][0] < floor:
            self._attempts.popleft()
