"""Alert rules of the original design's monitoring section, and their engine.

Each rule compares one figure with a threshold. An alert is published to
`{prefix}alerts` (and logged) once when its rule starts firing and once when
it recovers; the state lives in PostgreSQL (`alert_state`), so a restart or a
new leader does not fire again for a crossing already announced.

| rule                       | level    | fires when                                  |
|----------------------------|----------|---------------------------------------------|
| ai_cache_hit_rate_low      | WARNING  | today's AI hit rate < 70 %                  |
| voice_cache_hit_rate_low   | WARNING  | today's voice hit rate < 70 %               |
| avg_response_time_high     | WARNING  | today's average ai.response latency > 200 ms|
| redis_memory_high          | CRITICAL | used_memory > 90 % of maxmemory             |
| connection_failure_rate    | CRITICAL | > 5 % of Redis/PostgreSQL attempts failed   |
| connected_clients_high     | WARNING  | Redis connected_clients >= 1000             |

Rates need ALERT_MIN_SAMPLES events (or connection attempts) before they can
fire, so the first miss of the day is not an alert.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from redis.asyncio import Redis

from schemas.keys import business_day
from schemas.messages import AlertLevel, AlertMessage, AlertState
from streams.health import ConnectionHealth
from streams.model import DayFigures, Publish
from streams.observe.redis_info import read_targets, worst
from streams.projections import day_figures
from streams.redis_targets import RedisTargets, as_targets
from streams.settings import Settings
from streams.store import alerts as alert_store
from streams.store import postgres as pg
from streams.store.alerts import AlertLogEntry

log = logging.getLogger(__name__)

Level = AlertLevel
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    level: Level
    op: str
    threshold: float

    def fires(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


@dataclass(frozen=True, slots=True)
class Reading:
    """A figure and whether there is enough behind it to judge."""

    value: float
    enough: bool = True


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str
    state: AlertState
    level: Level
    metric: str
    value: float
    threshold: float
    time: datetime

    def message(self) -> AlertMessage:
        """What is published on `{prefix}alerts` (schemas/json/alert.schema.json)."""
        return AlertMessage(
            rule=self.rule,
            state=self.state,
            level=self.level,
            metric=self.metric,
            value=self.value,
            threshold=self.threshold,
            time=self.time,
        )

    def to_json(self) -> bytes:
        return self.message().to_json()

    def log_entry(self) -> AlertLogEntry:
        """Its `alert_log` row."""
        return AlertLogEntry(
            self.rule, self.state, self.level, self.metric, self.value, self.threshold, self.time
        )


def rules(settings: Settings) -> list[Rule]:
    return [
        Rule("ai_cache_hit_rate_low", "ai_cache_hit_rate", "WARNING", "<",
             settings.alert_hit_rate_min),
        Rule("voice_cache_hit_rate_low", "voice_cache_hit_rate", "WARNING", "<",
             settings.alert_hit_rate_min),
        Rule("avg_response_time_high", "avg_response_time", "WARNING", ">",
             settings.alert_avg_response_ms_max),
        Rule("redis_memory_high", "redis_memory_ratio", "CRITICAL", ">",
             settings.alert_redis_memory_ratio_max),
        Rule("connection_failure_rate", "connection_failure_rate", "CRITICAL", ">",
             settings.alert_connection_failure_rate_max),
        Rule("connected_clients_high", "redis_connected_clients", "WARNING", ">=",
             settings.alert_connected_clients_max),
    ]  # fmt: skip


def day_readings(figures: DayFigures, min_samples: int) -> dict[str, Reading]:
    """The readings of today's figures (`projections.day_figures`, as the stats hash and
    the dashboard show them); a rate needs `min_samples` lookups to be judged."""
    return {
        "ai_cache_hit_rate": Reading(figures.ai.hit_rate, figures.ai.lookups >= min_samples),
        "voice_cache_hit_rate": Reading(
            figures.voice.hit_rate, figures.voice.lookups >= min_samples
        ),
        "avg_response_time": Reading(figures.avg_response_ms, figures.ai.lookups >= min_samples),
    }


def transitions(
    rules_: list[Rule],
    readings: Mapping[str, Reading],
    firing: Mapping[str, bool],
    now: datetime,
) -> list[Alert]:
    """Alerts for every rule whose state changes; pure.

    A rule without a reading, or without enough samples, keeps its state.
    """
    out: list[Alert] = []
    for rule in rules_:
        reading = readings.get(rule.metric)
        if reading is None or not reading.enough:
            continue
        fires = rule.fires(reading.value)
        if fires != firing.get(rule.name, False):
            out.append(
                Alert(
                    rule.name,
                    "firing" if fires else "resolved",
                    rule.level,
                    rule.metric,
                    reading.value,
                    rule.threshold,
                    now,
                )
            )
    return out


class AlertEngine:
    """Reads the figures, publishes transitions; run by the leader worker."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        redis: Redis | RedisTargets,
        health: ConnectionHealth,
        publish: Publish,
        topic: str,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        """Every Redis target (SPEC §8), or one Redis: the Redis rules read all of them."""
        self.health = health
        self.publish = publish
        self.topic = topic
        self.rules = rules(settings)
        self.changed = True
        self._last_run = 0.0

    def mark_changed(self, *_: object) -> None:
        """Something the figures depend on moved: evaluate soon."""
        self.changed = True

    def due(self, monotonic_now: float) -> bool:
        interval = self.settings.alert_interval_s
        return self.changed or monotonic_now - self._last_run >= interval

    async def evaluate(self, now: datetime, monotonic_now: float) -> list[Alert]:
        self.changed = False
        self._last_run = monotonic_now
        readings = {**await self._pg_readings(now), **await self._redis_readings()}
        rate, attempts = self.health.failure_rate()
        readings["connection_failure_rate"] = Reading(
            rate, attempts >= self.settings.alert_min_samples
        )
        async with self.pool.acquire() as conn:
            state = await alert_store.firing_by_rule(conn)
        alerts = transitions(self.rules, readings, state, now)
        for alert in alerts:
            await self.announce(alert)
        return alerts

    async def _pg_readings(self, now: datetime) -> dict[str, Reading]:
        today = business_day(now, self.settings.tz)
        async with self.pool.acquire() as conn:
            counters = (await pg.day_counters(conn, [today]))[today]
        figures = day_figures(today, counters, None, self.settings.max_concurrent_sessions)
        return day_readings(figures, self.settings.alert_min_samples)

    async def _redis_readings(self) -> dict[str, Reading]:
        """The worst memory ratio and the most clients over every distinct Redis target
        (`redis_info.worst`, the figure the dashboard's Redis card shows): one full
        voice master is as critical as one full shared Redis. A target that does not
        answer is left out (the failure-rate rule speaks for it)."""
        figures = worst(await read_targets(as_targets(self.redis)))
        readings: dict[str, Reading] = {}
        if figures.connected_clients is not None:
            readings["redis_connected_clients"] = Reading(float(figures.connected_clients))
        if figures.memory_ratio is not None:
            readings["redis_memory_ratio"] = Reading(figures.memory_ratio)
        return readings

    async def announce(self, alert: Alert) -> None:
        """Log and publish `alert`, and remember its state (also for non-rule events)."""
        logger = log.error if alert.level == "CRITICAL" else log.warning
        logger(
            "ALERT %s %s %s: %s=%.4g (threshold %s)",
            alert.level, alert.rule, alert.state, alert.metric, alert.value, alert.threshold,
        )  # fmt: skip
        await self.publish(self.topic, alert.rule.encode(), alert.to_json())
        async with self.pool.acquire() as conn:
            await alert_store.record(conn, alert.log_entry())
