"""Reads the figures behind `/metrics` and `/dashboard.json` when someone looks.

`Monitor.refresh` reads PostgreSQL (today's counters, open sessions, alert
state and history, consumed positions, heartbeats), Redis (INFO of every
distinct target of SPEC §8, every master of a cluster target,
`streams.observe.redis_info`; the latency sorted
sets on the session target) and Kafka (end offsets of the source partitions)
concurrently, each within REFRESH_TIMEOUT_S, and keeps the result for
MIN_INTERVAL_S so that a dashboard left open in ten tabs costs one read per
second, not ten. A source that fails leaves its part of the snapshot empty and
`rpcache_source_up{source}` at 0: a page about an outage must still load. A
Redis target that fails is reported down on its own (`rpcache_redis_up{target}`
0, its row on the dashboard) while the other targets' figures are shown;
`redis` is up when every target and the latency sets answered.

Consumer lag is counted against what is stored in PostgreSQL
(`consumer_positions`, written in the same transaction as the state), not
against Kafka's committed offsets: it is the number of events whose effects
are not in PostgreSQL yet, the figure an operator cares about.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY, CollectorRegistry

from schemas.keys import (
    METRIC_WINDOWS,
    SESSION_TTL,
    SOURCE_TOPICS,
    MetricName,
    business_day,
    format_utc,
    metrics_key,
    topic_name,
)
from streams.health import ConnectionHealth
from streams.model import DayFigures
from streams.observe import heartbeat
from streams.observe.alerts import AlertEngine
from streams.observe.metrics import (
    AlertFigure,
    HealthCollector,
    LatencySummary,
    PipelineMetrics,
    Snapshot,
    SnapshotCollector,
    TargetFigures,
    latency_summary,
)
from streams.observe.redis_info import read_targets, worst
from streams.projections import day_figures
from streams.redis_targets import Client, RedisTargets
from streams.security import kafka_options
from streams.settings import Settings
from streams.store import alerts as alert_store
from streams.store import postgres as pg
from streams.store.alerts import RuleState

log = logging.getLogger(__name__)
T = TypeVar("T")

REFRESH_TIMEOUT_S = 2.0
MIN_INTERVAL_S = 1.0
HISTORY_ROWS = 25
SPARKLINE_S = 120
PARTITIONS_TTL_S = 30.0
"""How long the list of source partitions is reused (partitions are rarely added)."""
METRICS: tuple[MetricName, ...] = ("response_time", "synthesis_time")

GOALS = {
    "hit_rate": 0.85,
    "avg_response_ms": 100.0,
    "memory_ratio": 0.80,
    "connected_clients": 1000,
}
"""The design's monitoring goals; the alert thresholds (settings) are the red lines."""

Partition = tuple[str, int]


def consumer_lag(
    ends: dict[Partition, int], begins: dict[Partition, int], positions: dict[Partition, int]
) -> dict[Partition, int]:
    """Per partition: messages after the last one whose state PostgreSQL holds; pure.

    A partition never processed counts from its first retained message.
    """
    out: dict[Partition, int] = {}
    for tp, end in ends.items():
        begin = begins.get(tp, 0)
        stored = positions.get(tp)
        done = begin if stored is None else max(stored + 1, begin)
        out[tp] = max(0, end - done)
    return out


class Watched(Protocol):
    """What the monitor reads of the worker's runtime (streams/worker/runtime.py)."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Client
    """The session target's master: the latency sorted sets."""
    targets: RedisTargets
    """Every family's target: INFO of each distinct one."""
    metrics: PipelineMetrics
    health: ConnectionHealth
    alerts: AlertEngine


class Monitor:
    """The worker's window on itself and its dependencies (one per worker process)."""

    def __init__(self, runtime: Watched, registry: CollectorRegistry = REGISTRY) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.metrics: PipelineMetrics = runtime.metrics
        self.collector = SnapshotCollector()
        registry.register(self.collector)
        registry.register(HealthCollector(runtime.health))
        self._lock = asyncio.Lock()
        self._taken = -MIN_INTERVAL_S
        self._snapshot = Snapshot(taken_at=datetime.now(UTC))
        self._history: list[dict[str, Any]] = []
        self._workers: list[heartbeat.Heartbeat] = []
        self._kafka: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._partitions: list[TopicPartition] = []
        self._partitions_at = -PARTITIONS_TTL_S

    # --- refresh ------------------------------------------------------------------
    async def refresh(self) -> Snapshot:
        """The figures of now (at most MIN_INTERVAL_S old)."""
        async with self._lock:
            if time.monotonic() - self._taken < MIN_INTERVAL_S:
                return self._snapshot
            now = datetime.now(UTC)
            postgres, targets, latency, kafka = await asyncio.gather(
                _bounded(self._read_postgres(now)),
                read_targets(self.runtime.targets, REFRESH_TIMEOUT_S),
                _bounded(self._read_latency(now)),
                _bounded(self._read_kafka()),
            )
            snap = Snapshot(taken_at=now, redis=targets)
            snap.sources_up = {
                "postgres": postgres is not None,
                "redis": latency is not None and all(t.up for t in targets),
                "kafka": kafka is not None,
            }
            if postgres is not None:
                snap.day, snap.alerts, positions = postgres
                if kafka is not None:
                    ends, begins = kafka
                    snap.lag = consumer_lag(ends, begins, positions)
            if latency is not None:
                snap.latency = latency
            self._snapshot = snap
            self.collector.snapshot = snap
            self._taken = time.monotonic()
            return snap

    async def _read_postgres(
        self, now: datetime
    ) -> tuple[DayFigures, list[AlertFigure], dict[Partition, int]]:
        settings = self.settings
        today = business_day(now, settings.tz)
        async with self.runtime.pool.acquire() as conn:
            counters = (await pg.day_counters(conn, [today]))[today]
            active = await pg.count_open_sessions(conn, now, SESSION_TTL.total_seconds())
            state = await alert_store.rule_states(conn)
            history = await alert_store.latest_alerts(conn, HISTORY_ROWS)
            self._workers = await heartbeat.workers(conn, settings.app_id)
        positions = await pg.last_offsets(self.runtime.pool, settings.app_id)
        day = day_figures(today, counters, active, settings.max_concurrent_sessions)
        self._history = [{**asdict(e), "at": format_utc(e.at)} for e in history]  # newest first
        return day, self._alerts(state), positions

    def _alerts(self, state: list[RuleState]) -> list[AlertFigure]:
        """Every rule of the design (firing or not), plus any other rule in alert_state."""
        rows = {r.rule: r for r in state}
        out = [
            AlertFigure(
                rule.name,
                rule.level,
                rows[rule.name].firing if rule.name in rows else False,
                rows[rule.name].since if rule.name in rows else None,
            )
            for rule in self.runtime.alerts.rules
        ]
        known = {a.rule for a in out}
        out += [
            AlertFigure(name, r.level or "WARNING", r.firing, r.since)
            for name, r in sorted(rows.items())
            if name not in known
        ]
        return out

    async def _read_latency(self, now: datetime) -> dict[tuple[str, str], LatencySummary]:
        """(metric, window) → summary of `metrics:{metric}:{window}` (session target,
        where the key is stored: `RedisTargets.key`)."""
        targets = self.runtime.targets
        pipe = self.runtime.redis.pipeline(transaction=False)
        keys: list[tuple[str, str]] = []
        for metric in METRICS:
            for window, span in METRIC_WINDOWS.items():
                stored = targets.key(metrics_key(metric, window))
                pipe.zrangebyscore(stored, (now - span).timestamp(), "+inf")
                keys.append((metric, window))
        members = await pipe.execute()
        return {key: latency_summary(m) for key, m in zip(keys, members, strict=True)}

    async def _read_kafka(self) -> tuple[dict[Partition, int], dict[Partition, int]]:
        client = await self._kafka_client()
        partitions = await self._source_partitions()
        if not partitions:
            return {}, {}
        ends = await client.end_offsets(partitions)
        begins = await client.beginning_offsets(partitions)
        return (
            {(tp.topic, tp.partition): off for tp, off in ends.items()},
            {(tp.topic, tp.partition): off for tp, off in begins.items()},
        )

    async def _source_partitions(self) -> list[TopicPartition]:
        """Every partition of the source topics, assigned to this worker or not (cached)."""
        if time.monotonic() - self._partitions_at < PARTITIONS_TTL_S:
            return self._partitions
        if self._admin is None:
            admin = AIOKafkaAdminClient(**kafka_options(self.settings))
            await admin.start()
            self._admin = admin
        wanted = {topic_name(self.settings.topic_prefix, s) for s in SOURCE_TOPICS}
        # All topics, then filter: naming them could auto-create a missing one.
        described = await self._admin.describe_topics()
        self._partitions = sorted(
            (
                TopicPartition(t["topic"], p["partition"])
                for t in described
                if t["topic"] in wanted
                for p in t["partitions"]
            ),
            key=lambda tp: (tp.topic, tp.partition),
        )
        self._partitions_at = time.monotonic()
        return self._partitions

    async def _kafka_client(self) -> AIOKafkaConsumer:
        """A client outside the consumer group: reading offsets joins nothing."""
        if self._kafka is None:
            client = AIOKafkaConsumer(
                **kafka_options(self.settings),
                enable_auto_commit=False,
                metadata_max_age_ms=30_000,
            )
            await client.start()
            self._kafka = client
        return self._kafka

    async def close(self) -> None:
        if self._kafka is not None:
            await self._kafka.stop()
            self._kafka = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    # --- the dashboard ------------------------------------------------------------------
    async def dashboard(self) -> dict[str, Any]:
        """Everything `/dashboard` shows, as JSON-ready values (NaN becomes null)."""
        snap = await self.refresh()
        settings = self.settings
        meter = self.metrics.throughput
        lag = snap.lag
        return {
            "generated_at": format_utc(snap.taken_at),
            "worker": {
                "id": settings.worker_id,
                "app_id": settings.app_id,
                "pid": os.getpid(),
                "uptime_s": (datetime.now(UTC) - heartbeat.STARTED_AT).total_seconds(),
                "business_tz": settings.business_tz,
            },
            "sources": snap.sources_up,
            "goals": GOALS,
            "thresholds": {
                "hit_rate_min": settings.alert_hit_rate_min,
                "avg_response_ms_max": settings.alert_avg_response_ms_max,
                "memory_ratio_max": settings.alert_redis_memory_ratio_max,
                "connection_failure_rate_max": settings.alert_connection_failure_rate_max,
                "connected_clients_max": settings.alert_connected_clients_max,
            },
            "today": _day_json(snap.day),
            "latency": {
                metric: {
                    window: _latency_json(snap.latency.get((metric, window)))
                    for window in METRIC_WINDOWS
                }
                for metric in METRICS
            },
            "throughput": {
                "per_s_10s": meter.rate(10),
                "per_s_60s": meter.rate(60),
                "series": meter.series(SPARKLINE_S),
                "agents": {k: dict(v) for k, v in self.metrics.totals.items()},
            },
            "lag": None
            if lag is None
            else {
                "total": sum(lag.values()),
                "partitions": [
                    {"topic": t, "partition": p, "lag": n} for (t, p), n in sorted(lag.items())
                ],
            },
            "redis": redis_json(snap.redis),
            "connections": _connections_json(self.runtime),
            "alerts": {
                "firing": [
                    {"rule": a.rule, "level": a.level, "since": _utc(a.since)}
                    for a in snap.alerts or []
                    if a.firing
                ],
                "rules": len(snap.alerts or []),
                "history": self._history,
            },
            "workers": [
                {
                    "worker_id": w.worker_id,
                    "host": w.host,
                    "pid": w.pid,
                    "beat_age_s": w.age_s,
                    "stopped": w.stopped_at is not None,
                    "starting": w.starting and w.stopped_at is None,
                }
                for w in self._workers
            ],
        }


async def _bounded(step: Awaitable[T]) -> T | None:
    """`step` within REFRESH_TIMEOUT_S, or None (logged) when its source fails."""
    try:
        async with asyncio.timeout(REFRESH_TIMEOUT_S):
            return await step
    except Exception as exc:
        log.warning("monitor: a source did not answer: %r", exc)
        return None


def _utc(moment: datetime | None) -> str | None:
    return None if moment is None else format_utc(moment)


def _day_json(day: DayFigures | None) -> dict[str, Any] | None:
    """Today's figures as `/dashboard.json` shows them (the stats hash's, `day_figures`)."""
    if day is None:
        return None
    return {
        "day": day.day.isoformat(),
        **{
            cache: {"hits": f.hits, "misses": f.misses, "hit_rate": f.hit_rate}
            for cache, f in (("ai", day.ai), ("voice", day.voice))
        },
        "avg_response_ms": day.avg_response_ms,
        "error_rate": day.error_rate,
        "active_sessions": day.active_sessions,
        "sessions_today": day.sessions_started,
        "system_load": day.system_load,
    }


def redis_json(targets: list[TargetFigures]) -> dict[str, Any]:
    """The dashboard's Redis part; pure.

    `memory_ratio`/`memory_target` and `connected_clients`/`clients_target`
    are the alerts' figures (`redis_info.worst`: the fullest and the busiest
    target that answered, None when none did); `down` lists the targets that
    did not answer; `targets` has one row per distinct target, in family
    order: `up`, and either its figures (bytes, counts; `node` host:port and
    `role` of the server that answered) or `error`.
    """
    w = worst(targets)
    rows: list[dict[str, Any]] = []
    for t in targets:
        f = t.figures
        if f is None:
            rows.append({"target": t.target, "up": False, "error": t.error})
            continue
        rows.append(
            {
                "target": t.target,
                "up": True,
                "node": f.node,
                "role": f.role,
                "used_memory": f.used_memory,
                "maxmemory": f.maxmemory,
                "memory_ratio": f.memory_ratio,
                "policy": f.policy,
                "connected_clients": f.connected_clients,
                "evicted_keys": f.evicted_keys,
                "keys": f.keys,
            }
        )
    return {
        "memory_ratio": w.memory_ratio,
        "memory_target": w.memory_target,
        "connected_clients": w.connected_clients,
        "clients_target": w.clients_target,
        "down": [t.target for t in targets if not t.up],
        "targets": rows,
    }


def _latency_json(summary: LatencySummary | None) -> dict[str, Any]:
    if summary is None:
        return {"count": None, "p50": None, "p95": None, "p99": None}
    return {"count": summary.count, "p50": summary.p50, "p95": summary.p95, "p99": summary.p99}


def _connections_json(runtime: Watched) -> dict[str, Any]:
    rate, attempts = runtime.health.failure_rate()
    totals = runtime.health.totals
    return {
        "failure_ratio_5m": rate,
        "attempts_5m": attempts,
        "failures": {dep: totals[(dep, False)] for dep in ("postgres", "redis")},
    }
