"""Connections and pipelines of one worker process, opened once on start.

The agents find everything they need here (`app.runtime`): the PostgreSQL
pool, the Redis client and one `BatchPipeline` per source topic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from schemas.keys import (
    ALERTS_TOPIC,
    DEAD_LETTER_TOPIC,
    stats_key,
    topic_name,
)
from streams.database import pool_options
from streams.health import ConnectionHealth
from streams.model import BatchOutcome
from streams.observe.alerts import Alert, AlertEngine
from streams.observe.metrics import PipelineMetrics
from streams.projections import RedisOp
from streams.read.rebuild import Announce, RedisWatch
from streams.redis_targets import Client, RedisTargets
from streams.retry import until_done
from streams.security import kafka_options, redis_options
from streams.settings import Settings
from streams.sinks import redis as redis_sink
from streams.store.migrate import migrate
from streams.worker.topics import ensure_topics
from streams.worker.watchdog import Watchdog
from streams.write import deadletters
from streams.write.handlers.base import Handler
from streams.write.handlers.sessions import SessionHandler
from streams.write.handlers.stats import StatsProjector, overwritten
from streams.write.pipeline import BatchPipeline
from streams.write.registry import handlers

log = logging.getLogger(__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """A pool to DATABASE_URL, waiting for PostgreSQL, with the schema migrated."""

    async def connect() -> asyncpg.Pool:
        pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=1,
            max_size=settings.pg_pool_size,
            command_timeout=60,
            **pool_options(settings),
        )
        assert pool is not None
        return pool

    pool = await until_done(connect, max_backoff_s=settings.retry_max_backoff_s)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


REDIS_CLIENT_OPTIONS: dict[str, float] = {
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
    "health_check_interval": 10,
}


def open_targets(settings: Settings) -> RedisTargets:
    """The worker's Redis: a master client per family target (SPEC §8)."""
    return RedisTargets.from_settings(settings, **REDIS_CLIENT_OPTIONS)


def open_redis(settings: Settings) -> Redis:
    """One client on REDIS_URL (tools that address the default target only)."""
    url = settings.redis_url.get_secret_value()
    return Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=10,
        **redis_options(settings, url),
    )


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    redis: Client
    """The sessions family's write client (a master, or a whole cluster): stats, the
    data-loss marker, the latency sets the dashboard reads."""
    targets: RedisTargets
    """Every family's target; the write path sends each key to its own."""
    sessions_handler: SessionHandler
    pipelines: dict[str, BatchPipeline]
    """One per source topic (streams/write/registry.py), by agent name."""
    stats: StatsProjector
    health: ConnectionHealth
    alerts: AlertEngine
    watch: RedisWatch
    watchdog: Watchdog
    metrics: PipelineMetrics
    _offsets_client: AIOKafkaConsumer | None = None
    stats_failing: bool = False
    """The last stats tick failed (PostgreSQL or Redis unreachable)."""

    @classmethod
    async def start(cls, settings: Settings, publish: deadletters.Publish) -> Runtime:
        await ensure_topics(settings)
        pool = await open_pool(settings)
        targets = open_targets(settings)
        redis = targets.masters["sessions"]
        stats = StatsProjector(
            settings.tz, settings.max_concurrent_sessions, settings.stats_refresh_s
        )
        health = ConnectionHealth()
        alerts = AlertEngine(
            settings,
            pool,
            targets,
            health,
            publish,
            topic_name(settings.topic_prefix, ALERTS_TOPIC),
        )
        by_agent = handlers(settings)
        sessions_handler = by_agent["sessions"]
        assert isinstance(sessions_handler, SessionHandler)  # the idle sweep is its own
        metrics = PipelineMetrics()

        def on_batch(outcome: BatchOutcome) -> None:
            alerts.mark_changed()
            metrics.observe(outcome)

        def pipeline(fam: Handler) -> BatchPipeline:
            return BatchPipeline(
                handler=fam,
                topic_prefix=settings.topic_prefix,
                consumer_group=settings.app_id,
                pool=pool,
                redis=targets,
                publish=publish,
                dead_letter_topic=topic_name(settings.topic_prefix, DEAD_LETTER_TOPIC),
                max_event_bytes=settings.max_event_bytes,
                max_audio_bytes=settings.voice_max_audio_bytes,
                max_backoff_s=settings.retry_max_backoff_s,
                max_clock_skew_s=settings.max_clock_skew_s,
                health=health,
                on_batch=on_batch,
            )

        return cls(
            settings=settings,
            pool=pool,
            redis=redis,
            targets=targets,
            sessions_handler=sessions_handler,
            pipelines={name: pipeline(handler) for name, handler in by_agent.items()},
            stats=stats,
            health=health,
            alerts=alerts,
            watch=RedisWatch(pool, targets, settings, _rebuild_announcer(alerts)),
            watchdog=Watchdog(settings.watchdog_stall_s),
            metrics=metrics,
        )

    @property
    def retrying(self) -> bool:
        """A batch of some topic waits for Redis or PostgreSQL to come back."""
        return any(p.retrying for p in self.pipelines.values())

    async def flush_dead_letters(self) -> int:
        """Publish what the outbox holds (any pipeline flushes every topic's rows)."""
        return await next(iter(self.pipelines.values())).flush_dead_letters()

    async def sweep_idle_sessions(self) -> int:
        """Expire idle sessions in PostgreSQL and Redis; return how many ops ran."""
        now = datetime.now(UTC)

        async def persist() -> list[RedisOp]:
            async with self.pool.acquire() as conn, conn.transaction():
                return await self.sessions_handler.sweep(conn, now)

        ops = await until_done(persist, max_backoff_s=self.settings.retry_max_backoff_s)
        count = len(ops)  # a failed try cuts `ops` to what did not land
        await until_done(
            lambda: redis_sink.write_by_target(self.targets, ops),
            max_backoff_s=self.settings.retry_max_backoff_s,
        )
        return count

    async def project_stats(self) -> int:
        """Write the stats hashes that are due (leader only); return how many.

        One attempt: while PostgreSQL or Redis is unreachable the next tick
        tries again, and nothing is remembered as written until Redis took it.
        """
        now, now_mono = datetime.now(UTC), time.monotonic()
        shown = {day: await self._stats_shown(day) for day in self.stats.written}
        self.stats.forget(overwritten(self.stats.written, shown))
        async with self.pool.acquire() as conn, conn.transaction():
            ops, written = await self.stats.due(conn, now, now_mono)
        if ops:  # the hash is ours alone: one of another type is rewritten
            await redis_sink.write_rewriting(self.targets, ops)
            self.stats.remember(written, now_mono)
        return len(ops)

    async def _stats_shown(self, day: date) -> dict[str, str]:
        """The fields `stats:realtime:{day}` holds now; {} when gone or of another type."""
        key = stats_key(day)
        try:
            raw = await self.targets.master_for(key).hgetall(self.targets.key(key))
        except ResponseError as exc:
            if redis_sink.is_wrong_type(exc):
                return {}
            raise
        return {_text(name): _text(value) for name, value in raw.items()}

    async def end_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Kafka's end offsets of `partitions`, from a client outside the consumer group."""
        if self._offsets_client is None:
            client = AIOKafkaConsumer(enable_auto_commit=False, **kafka_options(self.settings))
            await client.start()
            self._offsets_client = client
        ends = await self._offsets_client.end_offsets([TopicPartition(t, p) for t, p in partitions])
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def has_records_after(self, topic: str, partition: int, offset: int) -> bool:
        """Does a record a read_committed consumer receives exist at or after `offset`?

        False when only transaction markers or aborted records remain (the
        watchdog must not call that a stall). A client outside the group,
        opened only when a stall is suspected.
        """
        tp = TopicPartition(topic, partition)
        client = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **kafka_options(self.settings),
        )
        await client.start()
        try:
            client.assign([tp])
            client.seek(tp, offset)
            batch = await client.getmany(tp, timeout_ms=3000, max_records=1)
            return bool(batch.get(tp))
        finally:
            await client.stop()

    async def close(self) -> None:
        if self._offsets_client is not None:
            await self._offsets_client.stop()
        await self.targets.aclose()
        await self.pool.close()


def _rebuild_announcer(alerts: AlertEngine) -> Announce:
    """Rebuild start/end as alerts: rule `redis_rebuild`, value = keys written."""

    async def announce(state: str, keys: float) -> None:
        await alerts.announce(
            Alert(
                "redis_rebuild",
                "firing" if state == "firing" else "resolved",
                "WARNING",
                "redis_keys_rebuilt",
                keys,
                0.0,
                datetime.now(UTC),
            )
        )

    return announce
