"""End-to-end throughput: rpcache's worker, a hand-written baseline and the consume ceiling.

All three read the same preloaded topics (each with a consumer of its own):

- **ours**: a real worker process (then one per core, `--processes`); timed
  from its first batch transaction (PostgreSQL's `min(stored_at)`), or from
  the end of the group's last rebalance when processes joined one after
  another (events stored before it are not counted), until PostgreSQL has
  stored every offset (`consumer_positions`, written in the batch
  transaction) and Redis holds
  every key the workload implies. Worker start-up (Faust boot, group join,
  migrations) is reported apart, as `startup_s`.
- **baseline**: what a team writes by hand with the same libraries: one
  aiokafka consumer with auto-commit, and per event one autocommitted
  `INSERT` and the Redis commands, each awaited. Timed from its first event,
  capped at `cap_s` (it is slow: the rate is steady long before the end).
- **ceiling**: an aiokafka consumer that only fetches and decodes
  (`decode_event`: orjson and the same strict validation). Nothing can
  process events faster than it can read them.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from schemas.events import Rejection, decode_event
from schemas.hashing import H
from schemas.keys import (
    AI_RESPONSE_TTL,
    METRIC_WINDOWS,
    METRICS_TTL,
    SESSION_TTL,
    STATS_TTL,
    USER_STATE_TTL,
    VOICE_TTL,
    ai_response_key_for_hash,
    metrics_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.database import asyncpg_options
from streams.security import redis_from_settings
from streams.store import progress
from streams.tools.bench.env import BenchEnv, WorkerProcess
from streams.tools.bench.kafka import plain_consumer, source_topics
from streams.tools.bench.stats import rate
from streams.tools.bench.workload import Expected


@dataclass
class Throughput:
    """One consumer's run over the preloaded events."""

    events: int
    seconds: float
    complete: bool
    """False when the run stopped at its time cap before the last event."""
    startup_s: float | None = None
    peak_rss_mb: float | None = None
    processes: int = 1
    """Worker processes (`rpcache worker --processes`); 1 for the baseline and ceiling."""
    settle_s: float = 0.0
    """From the first batch until the group stopped rebalancing (not in `seconds`)."""

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.seconds)


RECOVERY_READY = "[^---Recovery]: Worker ready"
"""What each Faust worker process logs once a rebalance gave it its partitions."""


def last_ready(log_text: str) -> float | None:
    """When the last rebalance of the group ended: the latest `Worker ready` line.

    Faust logs local time, `[2026-11-26 00:27:50,278] [pid] [INFO] ...`.
    """
    stamps = [
        datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in log_text.splitlines()
        if RECOVERY_READY in line and line.startswith("[")
    ]
    return max(stamps) if stamps else None


async def count_existing(redis: Redis, keys: list[str], chunk: int = 1000) -> int:
    """How many of `keys` exist, in few round trips."""
    total = 0
    for i in range(0, len(keys), chunk):
        total += int(await redis.exists(*keys[i : i + chunk]))
    return total


# --- ours ------------------------------------------------------------------------
async def run_ours(
    env: BenchEnv,
    expected: Expected,
    total: int,
    log_path: Path,
    timeout_s: float,
    loop: str | None = None,
    processes: int = 1,
) -> Throughput:
    """Start a worker on the preloaded topics and time it until everything landed."""
    worker = WorkerProcess(env.env, log_path, loop=loop, processes=processes)
    redis = redis_from_settings(env.settings)
    keys = expected.redis_keys()
    worker.start()
    conn: asyncpg.Connection[asyncpg.Record] | None = None
    try:
        conn = await _connect_migrated(env, worker, timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            polled_at = time.time()
            if not worker.alive():
                raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
            done = await progress.messages_done(conn, env.settings.app_id)
            if done >= total and await count_existing(redis, keys) == len(keys):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker stored {done} of {total} offsets in {timeout_s} s:\n"
                    f"{worker.log_tail()}"
                )
            await asyncio.sleep(0.1)
        peak = worker.peak_rss_mb()
        first = await progress.first_stored_epoch(conn)
        stored = await progress.events_stored(conn)
        dead = await progress.dead_letters(conn)
        if stored + dead != total or dead:
            raise RuntimeError(f"{stored} events stored and {dead} dead letters, of {total}")
        # Sustained rate: from the moment the consumer group stopped rebalancing
        # (several processes join one after the other) or the first batch.
        stable = max(first, last_ready(worker.log_path.read_text(errors="replace")) or first)
        before = await progress.events_stored_before(conn, stable)
        return Throughput(
            events=total - before,
            seconds=polled_at - stable,
            complete=True,
            startup_s=first - worker.started_at,
            peak_rss_mb=peak,
            processes=processes,
            settle_s=stable - first,
        )
    finally:
        worker.stop()
        if conn is not None:
            await conn.close()
        await redis.aclose()


async def _connect_migrated(
    env: BenchEnv, worker: WorkerProcess, timeout_s: float
) -> asyncpg.Connection[asyncpg.Record]:
    """A connection to the benchmark database once the worker has created the schema."""
    conn = await asyncpg.connect(
        env.settings.database_url.get_secret_value(), **asyncpg_options(env.settings)
    )
    deadline = time.monotonic() + timeout_s
    while True:
        if await progress.schema_created(conn):
            return conn
        if not worker.alive() or time.monotonic() > deadline:
            await conn.close()
            raise RuntimeError(f"the worker never migrated its database:\n{worker.log_tail()}")
        await asyncio.sleep(0.1)


# --- the hand-written baseline -----------------------------------------------------
# Its SQL stays spelled here, on purpose: the naive table and the per-event INSERT are
# what is measured (a team's first version), so they must not become rpcache's store.
NAIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_events (
    event_id    uuid PRIMARY KEY,
    type        text        NOT NULL,
    user_id     text        NOT NULL,
    session_id  uuid,
    occurred_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL
)
"""


async def run_baseline(env: BenchEnv, prefix: str, total: int, cap_s: float) -> Throughput:
    """The same events through a per-event consumer; see the module docstring."""
    conn = await asyncpg.connect(
        env.settings.database_url.get_secret_value(), **asyncpg_options(env.settings)
    )
    await conn.execute(NAIVE_SCHEMA)
    redis = redis_from_settings(env.settings)
    consumer = plain_consumer(env.settings, group=f"{env.settings.app_id}-naive")
    consumer.subscribe(source_topics(prefix))
    await consumer.start()
    done, started = 0, 0.0
    try:
        async for message in consumer:
            if not done:
                started = time.monotonic()
            event = decode_event(
                message.value,
                topic=message.topic.removeprefix(prefix),
                max_bytes=env.settings.max_event_bytes,
            )
            if not isinstance(event, Rejection):
                raw = orjson.loads(message.value)
                await conn.execute(
                    "INSERT INTO naive_events VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    event.event_id,
                    event.type,
                    event.user_id,
                    raw.get("session_id"),
                    event.occurred_at,
                    message.value.decode(),
                )
                await naive_redis(redis, raw, event.occurred_at)
            done += 1
            if done >= total or time.monotonic() - started > cap_s:
                break
        elapsed = time.monotonic() - started
    finally:
        await consumer.stop()
        await redis.aclose()
        await conn.close()
    return Throughput(events=done, seconds=elapsed, complete=done >= total)


async def naive_redis(redis: Redis, e: dict[str, Any], at: datetime) -> None:
    """The Redis commands a hand-written consumer sends for one event, each awaited.

    Incremental (HINCRBY, ZADD) rather than absolute, as such code usually is;
    the keys are the contract's (schemas/keys.py).
    """
    kind, day = e["type"], stats_key(at.astimezone(UTC).date())
    stats_ttl = int(STATS_TTL.total_seconds())
    if kind == "user.login":
        key = user_state_key(e["user_id"])
        prefs = orjson.dumps(e.get("preferences") or {}).decode()
        await redis.hset(key, mapping={"last_login": e["occurred_at"], "preferences": prefs})
        await redis.expire(key, USER_STATE_TTL)
    elif kind == "session.started":
        key = session_key(e["session_id"])
        fields = {
            "user_id": e["user_id"],
            "status": "active",
            "speaker_id": str(e["speaker_id"]),
            "conversation_context": orjson.dumps(e.get("conversation_context") or {}).decode(),
            "last_activity": e["occurred_at"],
            "performance_stats": "{}",
        }
        await redis.hset(key, mapping=fields)  # type: ignore[arg-type]
        await redis.expire(key, SESSION_TTL)
        user = user_state_key(e["user_id"])
        await redis.hset(user, "current_session_id", e["session_id"])
        await redis.hincrby(user, "daily_session_count", 1)
        await redis.expire(user, USER_STATE_TTL)
        await redis.hincrby(day, "total_sessions_today", 1)
        await redis.hincrby(day, "active_sessions", 1)
        await redis.expire(day, stats_ttl)
    elif kind == "session.activity":
        key = session_key(e["session_id"])
        stats = orjson.dumps(e.get("performance_stats") or {}).decode()
        await redis.hset(
            key, mapping={"last_activity": e["occurred_at"], "performance_stats": stats}
        )
        await redis.expire(key, SESSION_TTL)
    elif kind == "session.ended":
        await redis.delete(session_key(e["session_id"]))
        await redis.hset(user_state_key(e["user_id"]), "current_session_id", "")
        await redis.hincrby(day, "active_sessions", -1)
    elif kind == "ai.response":
        if not e.get("cache_hit"):
            value = orjson.dumps({k: e[k] for k in ("response", "provider", "model")}).decode()
            await redis.set(ai_response_key_for_hash(H(e["prompt"])), value, ex=AI_RESPONSE_TTL)
        await redis.hincrby(day, "ai_hits" if e.get("cache_hit") else "ai_misses", 1)
        await _naive_latency(redis, "response_time", e, at)
    elif kind == "voice.synthesized":
        if not e.get("cache_hit"):
            key = voice_key_for_hash(e["speaker_id"], H(e["text"]))
            await redis.set(key, e["audio"], ex=VOICE_TTL)
        await redis.hincrby(day, "voice_hits" if e.get("cache_hit") else "voice_misses", 1)
        await _naive_latency(redis, "synthesis_time", e, at)
    else:  # ai.failed, voice.failed
        await redis.hincrby(day, "failed", 1)


async def _naive_latency(redis: Redis, metric: Any, e: dict[str, Any], at: datetime) -> None:
    member = f"{e['latency_ms']}:{e['event_id']}"
    for window, span in METRIC_WINDOWS.items():
        key = metrics_key(metric, window)
        await redis.zadd(key, {member: at.timestamp()})
        await redis.zremrangebyscore(key, "-inf", at.timestamp() - span.total_seconds())
        await redis.expire(key, METRICS_TTL)


# --- the ceiling ------------------------------------------------------------------
async def run_ceiling(env: BenchEnv, prefix: str, total: int, timeout_s: float) -> Throughput:
    """Fetch and decode every preloaded event, nothing else."""
    consumer = plain_consumer(env.settings, group=None)  # no group: every partition, from 0
    consumer.subscribe(source_topics(prefix))
    await consumer.start()
    done, rejected, started = 0, 0, 0.0
    try:
        deadline = time.monotonic() + timeout_s
        while done < total and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batches and not done:
                started = time.monotonic()
            for tp, messages in batches.items():
                suffix = tp.topic.removeprefix(prefix)
                for m in messages:
                    result = decode_event(
                        m.value,
                        topic=suffix,
                        max_bytes=env.settings.max_event_bytes,
                        max_audio_bytes=env.settings.voice_max_audio_bytes,
                    )
                    rejected += isinstance(result, Rejection)
                done += len(messages)
        elapsed = time.monotonic() - started
    finally:
        await consumer.stop()
    if rejected:
        raise RuntimeError(f"{rejected} preloaded events did not decode")
    return Throughput(events=done, seconds=elapsed if done else math.nan, complete=done >= total)
