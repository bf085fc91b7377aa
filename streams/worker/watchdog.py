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

Nor is an offset the worker never receives: a transaction marker (a control
record, one per committed or aborted Kafka transaction) and the records of
an aborted transaction occupy offsets that read_committed consumers skip,
so the stored position stays below the end offset forever. Before calling a
partition stalled, the timer asks Kafka whether any record remains after the
stored position (`Runtime.has_records_after`); when none does, the partition
is `settled` at that end offset and has no lag until the end moves.
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
    _settled: dict[TopicPartition, int] = field(default_factory=dict)

    def settled(self, tp: TopicPartition, end_offset: int) -> None:
        """Nothing the worker can receive remains below `end_offset` (only transaction
        markers or aborted records): no lag on `tp` until its end offset moves."""
        self._settled[tp] = end_offset

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
            end = end_offsets.get(tp, 0)
            lag = 0 if self._settled.get(tp) == end else end - (position + 1)
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
