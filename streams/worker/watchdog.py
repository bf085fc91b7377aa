"""The consumer watchdog: a worker that stopped making progress exits for its supervisor.

Faust consumers have been seen to stop silently (after a broker outage, a
wedged rebalance, a stuck database lock) while messages pile up. Every
`WATCHDOG_INTERVAL_S` each worker compares, for the partitions it owns, the
end offsets in Kafka with the positions it stored in PostgreSQL (written in
the same transaction as the state, so they mean "processed"). When a
partition has lag and its position has not moved for `WATCHDOG_STALL_S`,
the worker logs why and exits with status 75 (EX_TEMPFAIL): a supervisor
(systemd, Docker's restart policy, Kubernetes) starts a fresh one, which
resumes from the committed offsets. Nothing is lost: offsets are committed
only after a batch landed.

A dependency outage is not a stall: while a pipeline is retrying Redis or
PostgreSQL, the watchdog waits with it instead of restarting the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
EXIT_STALLED = 75


@dataclass
class Stall:
    topic: str
    partition: int
    lag: int
    stuck_s: float

    def describe(self) -> str:
        return (
            f"{self.topic}[{self.partition}] lag {self.lag}, no progress for {self.stuck_s:.0f} s"
        )


@dataclass
class Watchdog:
    """Pure bookkeeping: positions seen over time; the I/O is the caller's."""

    stall_s: float
    clock: Callable[[], float] = time.monotonic
    _seen: dict[TopicPartition, tuple[int, float]] = field(default_factory=dict)

    def observe(
        self,
        assigned: Iterable[TopicPartition],
        end_offsets: dict[TopicPartition, int],
        positions: dict[TopicPartition, int],
        dependency_retrying: bool,
    ) -> list[Stall]:
        """Partitions stalled now. `positions` are last processed offsets (-1: none)."""
        now = self.clock()
        stalls: list[Stall] = []
        for tp in assigned:
            position = positions.get(tp, -1)
            lag = end_offsets.get(tp, 0) - (position + 1)
            last = self._seen.get(tp)
            if last is None or last[0] != position or lag <= 0 or dependency_retrying:
                self._seen[tp] = (
                    position,
                    now,
                )  # progress, nothing to do, or waiting on a dependency
                continue
            stuck = now - last[1]
            if stuck >= self.stall_s:
                stalls.append(Stall(tp[0], tp[1], lag, stuck))
        return stalls
