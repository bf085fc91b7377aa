"""What a reader counts: the counters its reads move, and the snapshot it shows.

`Counters` is the one mutable tally a reader's parts share (the reads, the
nodes, the budget, the PostgreSQL side each move their own fields);
`ReaderStats` is the frozen snapshot `CacheReader.stats` returns, which
`streams.observe.metrics.register_reader` exports to Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from streams.read.breaker import BreakerState


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """Counters since the reader started; a snapshot, later exported to Prometheus.

    Every read counts once in `reads` and once in exactly one of `hits` (source
    "redis"), `misses` (source "miss") or the PostgreSQL-served reads
    (`reads - hits - misses`); `fallbacks` and `read_throughs` say why
    PostgreSQL was asked and overlap with `misses`.
    """

    reads: int = 0
    hits: int = 0
    """Served by Redis (a master or a replica)."""
    misses: int = 0
    """No live entry anywhere (absent, or its TTL has run out)."""
    fallbacks: int = 0
    """Answered by PostgreSQL because Redis failed, timed out or the breaker was open."""
    read_throughs: int = 0
    """Redis answered "absent" and PostgreSQL had a live entry."""
    write_backs: int = 0
    """Read-through entries written back to the family's Redis master."""
    write_back_errors: int = 0
    redis_errors: int = 0
    """Redis round trips that failed, ran out of budget or got an error reply."""
    breaker_opens: int = 0
    """Times a target's breaker opened (replica breakers not included), all targets
    (a cluster target's masters' included)."""
    breaker_state: BreakerState = BreakerState.CLOSED
    """The worst state of the targets' breakers, a cluster's masters' included (open,
    then half-open, then closed)."""
    replica_hits: int = 0
    """Of `hits`, served by a replica."""
    replica_fallbacks: int = 0
    """Reads the master answered because the replica failed or its breaker was open."""
    queued: int = 0
    """Reads that waited for a slot of their target (this process's own queue)."""
    queue_wait_s: float = 0.0
    """Their total wait, in seconds: time never counted against Redis."""
    loop_late: int = 0
    """Round trips whose budget ran out while this process's event loop was late, so
    they were given more time instead of being blamed on Redis."""
    overloaded: int = 0
    """Of those, still unanswered after OVERLOAD_GRACE_S: PostgreSQL answered and
    no breaker was charged."""
    breakers: Mapping[str, BreakerState] = field(default_factory=dict)
    """Each breaker's state: a target's by its name, its replica's as `name/replica`;
    a cluster target's masters' as `name@host:port` and their replicas' as
    `name@host:port/replica` (`name` alone: its slot map's)."""


@dataclass(slots=True)
class Counters:
    """The running tally behind `ReaderStats` (its fields, without the breakers')."""

    reads: int = 0
    hits: int = 0
    misses: int = 0
    fallbacks: int = 0
    read_throughs: int = 0
    write_backs: int = 0
    write_back_errors: int = 0
    redis_errors: int = 0
    replica_hits: int = 0
    replica_fallbacks: int = 0
    queued: int = 0
    queue_wait_s: float = 0.0
    loop_late: int = 0
    overloaded: int = 0

    def snapshot(
        self,
        breakers: Mapping[str, BreakerState],
        breaker_opens: int,
        breaker_state: BreakerState,
    ) -> ReaderStats:
        """The counters as they are now, with what the breakers say."""
        return ReaderStats(
            **asdict(self),  # every counter is a field of ReaderStats
            breaker_opens=breaker_opens,
            breaker_state=breaker_state,
            breakers=breakers,
        )
