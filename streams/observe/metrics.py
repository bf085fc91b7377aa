"""Prometheus metrics of rpcache: every metric name is defined here.

Two kinds of figures, two ways to export them:

- What happens inside the worker (batches, events, freshness, connection
  attempts) is counted as it happens: `PipelineMetrics.observe` is the
  pipelines' `on_batch` callback, and `ConnectionHealth` keeps its totals.
- What other systems know (today's counters and open sessions in PostgreSQL,
  INFO of every Redis target (`target` label, SPEC §8;
  `streams.observe.redis_info`), the latency sorted sets, Kafka end offsets,
  `alert_state`) is read when someone looks:
  `streams.observe.monitor.Monitor.refresh` takes a `Snapshot` before each
  `/metrics` scrape or dashboard poll, and `SnapshotCollector` turns it into
  gauges. PostgreSQL's figures are the
  group's (every worker of the consumer group reports the same), the
  pipeline counters are this worker's.

A process that uses `CacheReader` exports its read statistics with
`register_reader(reader)`.

The pure helpers (`percentile`, `latency_summary`, `ThroughputMeter`) are
shared with the dashboard, so the page and `/metrics` cannot disagree.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from schemas.keys import AGENT_TOPICS
from streams.health import ConnectionHealth
from streams.model import BatchOutcome, DayFigures

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, understood by every Prometheus version."""

AGENT_OF_TOPIC: dict[str, str] = {suffix: name for name, suffix in AGENT_TOPICS.items()}
"""Topic suffix → the `agent` label (the agents' names, `schemas.keys.AGENT_TOPICS`)."""

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
"""Seconds from occurred_at to the Redis write; the design's goal is well under 1 s."""

QUANTILES = (0.5, 0.95, 0.99)


def agent_label(topic_suffix: str) -> str:
    return AGENT_OF_TOPIC.get(topic_suffix, topic_suffix)


# --- pure helpers -----------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in (0, 1]).

    Nearest rank returns a value that was really observed, so "p99 = 812 ms"
    names a real response; NaN for no values.
    """
    if not sorted_values:
        return math.nan
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50: float
    p95: float
    p99: float

    def quantiles(self) -> dict[float, float]:
        return {0.5: self.p50, 0.95: self.p95, 0.99: self.p99}


def latency_summary(members: Iterable[str | bytes]) -> LatencySummary:
    """p50/p95/p99 of `metrics:{metric}:{window}` members (`{latency_ms}:{event_id}`).

    A member that does not parse is skipped rather than failing the page.
    """
    values: list[float] = []
    for member in members:
        text = member.decode() if isinstance(member, bytes) else member
        head, sep, _ = text.partition(":")
        if not sep:
            continue
        try:
            value = float(head)
        except ValueError:
            continue
        if math.isfinite(value):
            values.append(value)
    values.sort()
    return LatencySummary(
        len(values), percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)
    )


class ThroughputMeter:
    """Events per second of this worker, in one-second buckets over the last `keep_s`.

    The dashboard's sparkline and "events/s" come from here; Prometheus
    computes its own rates from the counters.
    """

    def __init__(self, keep_s: int = 300, clock: Callable[[], float] = time.time) -> None:
        self.keep_s = keep_s
        self.clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first

    def record(self, n: int) -> None:
        second = int(self.clock())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += n
        else:
            self._buckets.append([second, n])
        self._trim(second)

    def series(self, seconds: int) -> list[int]:
        """Counts of the last `seconds` complete seconds, oldest first (zeros filled in)."""
        now = int(self.clock())
        self._trim(now)
        counts = {s: n for s, n in self._buckets}
        return [counts.get(s, 0) for s in range(now - seconds, now)]

    def rate(self, window_s: int) -> float:
        """Mean events per second over the last `window_s` complete seconds."""
        return sum(self.series(window_s)) / window_s if window_s > 0 else 0.0

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] < now - self.keep_s:
            self._buckets.popleft()


# --- what the pipelines count ---------------------------------------------------------
class PipelineMetrics:
    """Counters and histograms fed by every batch (`BatchPipeline(on_batch=...)`)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["agent"]
        self.consumed = PromCounter(
            "rpcache_events_consumed",
            "Kafka messages taken by the agents, valid or not.",
            labels,
            registry=registry,
        )
        self.projected = PromCounter(
            "rpcache_events_projected",
            "Valid events persisted to PostgreSQL and projected to Redis (duplicates included).",
            labels,
            registry=registry,
        )
        self.new = PromCounter(
            "rpcache_events_new",
            "Events stored for the first time (not duplicates).",
            labels,
            registry=registry,
        )
        self.duplicates = PromCounter(
            "rpcache_events_duplicate",
            "Valid events whose event_id was already stored (no further effect).",
            labels,
            registry=registry,
        )
        self.dead_lettered = PromCounter(
            "rpcache_events_dead_lettered",
            "Events written to dead_letters and {prefix}dead-letters, by reason.",
            ["agent", "reason"],
            registry=registry,
        )
        self.misrouted = PromCounter(
            "rpcache_events_misrouted",
            "Valid events keyed other than by their user_id (or not keyed), accepted:"
            " Kafka keeps one user's events in order only when keyed by user_id.",
            labels,
            registry=registry,
        )
        self.retries = PromCounter(
            "rpcache_batch_retries",
            "Retried attempts of a batch step (Redis or PostgreSQL unavailable).",
            labels,
            registry=registry,
        )
        self.batch_size = PromHistogram(
            "rpcache_batch_size",
            "Messages per batch.",
            labels,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = PromHistogram(
            "rpcache_batch_seconds",
            "Time to process one batch: decode, persist, project, publish dead letters.",
            labels,
            buckets=BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.freshness = PromHistogram(
            "rpcache_event_freshness_seconds",
            "From an event's occurred_at to its projection into Redis (new events).",
            labels,
            buckets=FRESHNESS_BUCKETS,
            registry=registry,
        )
        for name in AGENT_TOPICS:  # every series exists from the start, at 0
            for metric in (
                self.consumed,
                self.projected,
                self.new,
                self.duplicates,
                self.misrouted,
                self.retries,
            ):
                metric.labels(name)
        self.throughput = ThroughputMeter()
        self.totals: dict[str, Counter[str]] = {name: Counter() for name in AGENT_TOPICS}
        """Per agent: consumed, projected, dead_lettered, batches (for the dashboard)."""

    def observe(self, outcome: BatchOutcome) -> None:
        agent = agent_label(outcome.topic)
        self.consumed.labels(agent).inc(outcome.messages)
        self.projected.labels(agent).inc(outcome.accepted)
        self.new.labels(agent).inc(outcome.new)
        self.duplicates.labels(agent).inc(outcome.duplicates)
        self.retries.labels(agent).inc(outcome.retries)
        self.misrouted.labels(agent).inc(outcome.misrouted)
        for reason, n in Counter(outcome.reasons).items():
            self.dead_lettered.labels(agent, reason).inc(n)
        self.batch_size.labels(agent).observe(outcome.messages)
        self.batch_seconds.labels(agent).observe(outcome.seconds)
        fresh = self.freshness.labels(agent)
        for seconds in outcome.freshness_s:
            fresh.observe(seconds)
        self.throughput.record(outcome.messages)
        totals = self.totals.setdefault(agent, Counter())
        totals.update(
            consumed=outcome.messages,
            projected=outcome.accepted,
            dead_lettered=outcome.dead_letters,
            batches=1,
        )


# --- what is read when someone looks ------------------------------------------------
@dataclass(frozen=True, slots=True)
class RedisFigures:
    """One Redis target's INFO, as the node that answered gave it
    (`streams.observe.redis_info.parse_info`)."""

    used_memory: int
    """INFO used_memory, bytes."""
    maxmemory: int
    """INFO maxmemory, bytes; 0 = no limit."""
    connected_clients: int
    evicted_keys: int
    """INFO evicted_keys: keys evicted since that server started."""
    keys: int = 0
    """Keys in the target's db (INFO keyspace `db<n>`)."""
    policy: str = ""
    """INFO maxmemory_policy (`volatile-lru`, `allkeys-lfu`…)."""
    node: str = ""
    """`host:port` of the server that answered (a Sentinel target's current master)."""
    role: str = ""
    """INFO role: `master` or `replica`."""

    @property
    def memory_ratio(self) -> float | None:
        """used / max, or None when Redis has no maxmemory (no limit to compare with)."""
        return self.used_memory / self.maxmemory if self.maxmemory else None


@dataclass(frozen=True, slots=True)
class TargetFigures:
    """One distinct Redis target (SPEC §8) at a refresh: its figures, or why it is down."""

    target: str
    """Its families joined by `+` (`streams.redis_targets.target_label`): `voice`,
    `sessions+ai+voice`; for one master of a cluster target, that and `@host:port`
    (`streams.redis_targets.master_label`)."""
    figures: RedisFigures | None
    """None when it did not answer in time."""
    error: str | None = None
    """Why it is down (the exception's repr), when it is."""

    @property
    def up(self) -> bool:
        return self.figures is not None


@dataclass(frozen=True, slots=True)
class RedisWorst:
    """The Redis figures the alerts judge (`streams.observe.redis_info.worst`): the
    fullest and the busiest target that answered; None when none answered (or, for
    the ratio, none has a maxmemory)."""

    memory_ratio: float | None = None
    memory_target: str | None = None
    connected_clients: int | None = None
    clients_target: str | None = None


@dataclass(frozen=True, slots=True)
class AlertFigure:
    rule: str
    level: str
    firing: bool
    since: datetime | None


@dataclass(slots=True)
class Snapshot:
    """Figures of other systems at `taken_at`; a part is None when its source failed."""

    taken_at: datetime
    day: DayFigures | None = None
    """Today's figures (`projections.day_figures`: the stats hash's and the alerts')."""
    latency: dict[tuple[str, str], LatencySummary] = field(default_factory=dict)
    """(metric, window) → summary of `metrics:{metric}:{window}`."""
    lag: dict[tuple[str, int], int] | None = None
    """(topic, partition) → messages after the last one stored in PostgreSQL."""
    redis: list[TargetFigures] = field(default_factory=list)
    """Every distinct Redis target, in family order (a cluster: every master, in slot
    order); a target down has no figures."""
    alerts: list[AlertFigure] | None = None
    sources_up: dict[str, bool] = field(default_factory=dict)
    """postgres, redis, kafka → whether this snapshot could read them."""


class SnapshotCollector:
    """Gauges of the latest `Snapshot` (read by `Monitor.refresh` just before)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        snap = self.snapshot
        if snap is None:
            return
        up = GaugeMetricFamily(
            "rpcache_source_up",
            "Whether the last refresh could read this source (postgres, redis, kafka).",
            labels=["source"],
        )
        for source, ok in sorted(snap.sources_up.items()):
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up
        if snap.day is not None:
            yield from _day_metrics(snap.day)
        if snap.latency:
            yield from _latency_metrics(snap.latency)
        if snap.lag is not None:
            lag = GaugeMetricFamily(
                "rpcache_consumer_lag",
                "Messages of a source partition after the last one stored with its state.",
                labels=["topic", "partition"],
            )
            for (topic, partition), value in sorted(snap.lag.items()):
                lag.add_metric([topic, str(partition)], value)
            yield lag
        if snap.redis:
            yield from _redis_metrics(snap.redis)
        if snap.alerts is not None:
            firing = GaugeMetricFamily(
                "rpcache_alert_firing",
                "1 while an alert rule fires (alert_state in PostgreSQL).",
                labels=["rule", "level"],
            )
            for alert in snap.alerts:
                firing.add_metric([alert.rule, alert.level], 1.0 if alert.firing else 0.0)
            yield firing
            yield GaugeMetricFamily(
                "rpcache_alerts_firing",
                "Alert rules firing now.",
                value=sum(1 for a in snap.alerts if a.firing),
            )


def _day_metrics(day: DayFigures) -> Iterable[GaugeMetricFamily]:
    rate = GaugeMetricFamily(
        "rpcache_cache_hit_rate",
        "Today's hits / (hits + misses) per cache (business day of BUSINESS_TZ).",
        labels=["cache"],
    )
    hits = GaugeMetricFamily("rpcache_cache_hits_today", "Today's cache hits.", labels=["cache"])
    lookups = GaugeMetricFamily(
        "rpcache_cache_lookups_today", "Today's hits + misses per cache.", labels=["cache"]
    )
    for cache, figures in (("ai", day.ai), ("voice", day.voice)):
        rate.add_metric([cache], figures.hit_rate)
        hits.add_metric([cache], figures.hits)
        lookups.add_metric([cache], figures.lookups)
    yield from (rate, hits, lookups)
    yield GaugeMetricFamily(
        "rpcache_avg_response_time_ms",
        "Today's mean ai.response latency_ms, hits and misses.",
        value=day.avg_response_ms,
    )
    yield GaugeMetricFamily(
        "rpcache_error_rate",
        "Today's failed / all inference and synthesis events.",
        value=day.error_rate,
    )
    if day.active_sessions is not None:
        yield GaugeMetricFamily(
            "rpcache_active_sessions",
            "Sessions neither ended nor idle for 30 minutes.",
            value=day.active_sessions,
        )
    yield GaugeMetricFamily(
        "rpcache_sessions_started_today",
        "session.started events today.",
        value=day.sessions_started,
    )
    if day.system_load is not None:
        yield GaugeMetricFamily(
            "rpcache_system_load",
            "active_sessions / MAX_CONCURRENT_SESSIONS.",
            value=day.system_load,
        )


def _latency_metrics(
    latency: dict[tuple[str, str], LatencySummary],
) -> Iterable[GaugeMetricFamily]:
    quantiles = GaugeMetricFamily(
        "rpcache_latency_ms",
        "Percentiles of latency_ms in the metrics:{metric}:{window} sorted sets.",
        labels=["metric", "window", "quantile"],
    )
    samples = GaugeMetricFamily(
        "rpcache_latency_samples",
        "Members of metrics:{metric}:{window} inside the window.",
        labels=["metric", "window"],
    )
    for (metric, window), summary in sorted(latency.items()):
        samples.add_metric([metric, window], summary.count)
        if summary.count:
            for q, value in summary.quantiles().items():
                quantiles.add_metric([metric, window, str(q)], value)
    yield from (quantiles, samples)


def _redis_metrics(
    targets: Sequence[TargetFigures],
) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
    """Every target's INFO figures, labelled `target`; a target down has
    `rpcache_redis_up` 0 and no other series."""
    up = GaugeMetricFamily(
        "rpcache_redis_up",
        "Whether the last refresh could read this Redis target's INFO (SPEC §8).",
        labels=["target"],
    )
    node = GaugeMetricFamily(
        "rpcache_redis_info",
        "1 for the server that answered for a target: host:port, role, maxmemory-policy.",
        labels=["target", "node", "role", "maxmemory_policy"],
    )
    label = ["target"]
    used = GaugeMetricFamily(
        "rpcache_redis_used_memory_bytes", "Redis INFO used_memory.", labels=label
    )
    maxmemory = GaugeMetricFamily(
        "rpcache_redis_maxmemory_bytes", "Redis INFO maxmemory (0 = no limit).", labels=label
    )
    clients = GaugeMetricFamily(
        "rpcache_redis_connected_clients", "Redis INFO connected_clients.", labels=label
    )
    evicted = CounterMetricFamily(
        "rpcache_redis_evicted_keys",
        "Redis INFO evicted_keys (since the Redis server started).",
        labels=label,
    )
    keys = GaugeMetricFamily(
        "rpcache_redis_keys", "Keys in the target's db (INFO keyspace).", labels=label
    )
    for t in targets:
        up.add_metric([t.target], 1.0 if t.up else 0.0)
        f = t.figures
        if f is None:
            continue
        node.add_metric([t.target, f.node, f.role, f.policy], 1.0)
        used.add_metric([t.target], f.used_memory)
        maxmemory.add_metric([t.target], f.maxmemory)
        clients.add_metric([t.target], f.connected_clients)
        evicted.add_metric([t.target], f.evicted_keys)
        keys.add_metric([t.target], f.keys)
    yield from (up, node, used, maxmemory, clients, evicted, keys)


class HealthCollector:
    """The worker's Redis and PostgreSQL write attempts (`ConnectionHealth`)."""

    def __init__(self, health: ConnectionHealth) -> None:
        self.health = health

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        attempts = CounterMetricFamily(
            "rpcache_connection_attempts",
            "Write attempts of the pipelines per dependency.",
            labels=["dependency"],
        )
        failures = CounterMetricFamily(
            "rpcache_connection_failures",
            "Write attempts that failed with a transient error (then retried).",
            labels=["dependency"],
        )
        totals = self.health.totals
        for dependency in ("postgres", "redis"):
            failed = totals[(dependency, False)]
            attempts.add_metric([dependency], totals[(dependency, True)] + failed)
            failures.add_metric([dependency], failed)
        yield attempts
        yield failures
        rate, _ = self.health.failure_rate()
        yield GaugeMetricFamily(
            "rpcache_connection_failure_ratio",
            "Failed / all attempts over the last 5 minutes (the alert's window).",
            value=rate,
        )


# --- the read library ------------------------------------------------------------------
class ReaderStatsLike(Protocol):
    """What `streams.read.reader.ReaderStats` offers (kept structural: no import cycle)."""

    @property
    def reads(self) -> int: ...
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def fallbacks(self) -> int: ...
    @property
    def read_throughs(self) -> int: ...
    @property
    def redis_errors(self) -> int: ...
    @property
    def breaker_opens(self) -> int: ...
    @property
    def breaker_state(self) -> str: ...
    @property
    def replica_hits(self) -> int: ...
    @property
    def replica_fallbacks(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def queue_wait_s(self) -> float: ...
    @property
    def loop_late(self) -> int: ...
    @property
    def overloaded(self) -> int: ...
    @property
    def breakers(self) -> Mapping[str, object]: ...


class ReaderLike(Protocol):
    @property
    def stats(self) -> ReaderStatsLike: ...


BREAKER_STATES = ("closed", "open", "half_open")


class ReaderCollector:
    """`CacheReader.stats` as counters, plus the circuit breaker's state."""

    def __init__(self, reader: ReaderLike) -> None:
        self.reader = reader

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.reader.stats
        counters = {
            "reads": ("Reads answered by the reader.", stats.reads),
            "redis_hits": ("Reads served by Redis.", stats.hits),
            "misses": ("Reads with no live entry anywhere.", stats.misses),
            "postgres_reads": (
                "Reads served by PostgreSQL (fallback or read-through).",
                stats.reads - stats.hits - stats.misses,
            ),
            "fallbacks": (
                "Reads PostgreSQL answered because Redis failed, timed out or the breaker "
                "was open.",
                stats.fallbacks,
            ),
            "read_throughs": (
                "Redis said absent and PostgreSQL had a live entry.",
                stats.read_throughs,
            ),
            "redis_errors": ("Redis reads that failed or ran out of budget.", stats.redis_errors),
            "breaker_opens": ("Times a target's circuit breaker opened.", stats.breaker_opens),
            "replica_hits": ("Of the Redis hits, served by a replica.", stats.replica_hits),
            "replica_fallbacks": (
                "Reads a master answered because its replica failed or its breaker was open.",
                stats.replica_fallbacks,
            ),
            "queued": (
                "Reads that waited for one of their target's READ_MAX_IN_FLIGHT slots.",
                stats.queued,
            ),
            "queue_wait_seconds": (
                "Seconds reads waited for a slot (never counted against Redis).",
                stats.queue_wait_s,
            ),
            "loop_late": (
                "Round trips given more time because this process's event loop ran late.",
                stats.loop_late,
            ),
            "overloaded": (
                "Reads PostgreSQL answered because this process was overloaded (no breaker"
                " charged).",
                stats.overloaded,
            ),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"rpcache_reader_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "rpcache_reader_fallback_ratio",
            "fallbacks / reads since the reader started.",
            value=stats.fallbacks / stats.reads if stats.reads else 0.0,
        )
        state = GaugeMetricFamily(
            "rpcache_reader_breaker_state",
            "1 for the circuit breaker's current state (closed, open, half_open).",
            labels=["state"],
        )
        current = str(stats.breaker_state)
        for name in BREAKER_STATES:
            state.add_metric([name], 1.0 if current == name else 0.0)
        yield state
        per_breaker = GaugeMetricFamily(
            "rpcache_reader_target_breaker_state",
            "1 for each breaker's current state: a Redis target's by its families"
            " (e.g. voice), its replica's as <target>/replica; on a cluster target"
            " one per master, <target>@<host:port>, and its replicas'"
            " <target>@<host:port>/replica (SPEC §8).",
            labels=["breaker", "state"],
        )
        for breaker, breaker_state in sorted(stats.breakers.items()):
            for name in BREAKER_STATES:
                per_breaker.add_metric([breaker, name], 1.0 if str(breaker_state) == name else 0.0)
        yield per_breaker


def register_reader(reader: ReaderLike, registry: CollectorRegistry = REGISTRY) -> Collector:
    """Export `reader.stats` from this process's registry; returns the collector.

    For a roleplay service: `register_reader(reader)` once, then serve
    `prometheus_client.generate_latest()` (or `start_http_server`).
    """
    collector = ReaderCollector(reader)
    registry.register(collector)
    return collector


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in the Prometheus text format (`CONTENT_TYPE`)."""
    return generate_latest(registry)
