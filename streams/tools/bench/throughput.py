"""End-to-end throughput: rpcache's worker, two hand-written baselines and the consume ceiling.

All of them read the same preloaded topics (each with a consumer of its own):

- **ours**: a real worker process (then one per core, `--processes`); timed
  from its first batch transaction (PostgreSQL's `min(stored_at)`), or from
  the end of the group's last rebalance when processes joined one after
  another (events stored before it are not counted), until PostgreSQL has
  stored every offset (`consumer_positions`, written in the batch
  transaction) and Redis holds
  every key the workload implies. Worker start-up (Faust boot, group join,
  migrations) is reported apart, as `startup_s`.
- **hand-batched** (`run_batched`): what a competent engineer writes by hand
  in an afternoon with the same libraries, the baseline to beat: one aiokafka
  consumer of its own group, `getmany` batches of up to `BATCH_RECORDS`
  records; per batch, decode each (`decode_event`, as the ceiling), one
  `executemany` INSERT (`ON CONFLICT DO NOTHING`) into a plain events table
  in one transaction, one Redis pipeline (`transaction=False`) of the
  batch's commands (the naive baseline's, queued instead of awaited), then
  `consumer.commit()`. It does less than rpcache: no state (sessions, users,
  counters are incremented in Redis, never read back or rebuilt), no
  exactly-once across both stores (a crash between the commit and the
  pipeline, or before the Kafka commit, counts a redelivered event twice),
  no dead letters (an event that does not decode is skipped), no
  dead-letter outbox, heartbeat, retries or metrics. Timed from its first
  batch to the last event.
- **baseline** (naive, `run_baseline`): what a team writes first: one
  aiokafka consumer with auto-commit, and per event one autocommitted
  `INSERT` and the Redis commands, each awaited. Timed from its first event,
  capped at `cap_s` (it is slow: the rate is steady long before the end).
- **ceiling**: an aiokafka consumer that only fetches and decodes
  (`decode_event`: orjson and the same strict validation). Nothing can
  process events faster than it can read them.

Each run also measures CPU time per event (`cpu.py`): the consumer's (the
worker process(es), or this process for the in-process consumers) and
PostgreSQL's, over the same window as the rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from schemas.events import Event, Rejection, decode_event
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
from streams.redis_targets import Client, RedisTargets, as_targets
from streams.security import kafka_options, redis_from_settings
from streams.store import progress
from streams.tools.bench.cpu import (
    CpuSample,
    CpuTimes,
    PostgresCpu,
    cpu_delta,
    self_cpu_s,
    window_start,
)
from streams.tools.bench.env import BenchEnv, WorkerProcess
from streams.tools.bench.kafka import plain_consumer, source_topics
from streams.tools.bench.stats import per_event_us, rate
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
    worker_cpu_s: float | None = None
    """CPU seconds (user + system) the consumer spent over the CPU window: the worker
    process(es), or this process for the in-process consumers; None: not measured."""
    postgres_cpu_s: float | None = None
    """CPU seconds PostgreSQL's processes spent over the CPU window (`cpu.py`); None
    when not measured (the ceiling) or PostgreSQL is not local."""
    cpu_events: int | None = None
    """Events processed in the CPU window; None: the timed window itself (`events`)."""

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.seconds)

    @property
    def worker_cpu_us(self) -> float:
        """The consumer's CPU time per event, in microseconds (NaN: not measured)."""
        return per_event_us(self.worker_cpu_s, self._cpu_events)

    @property
    def postgres_cpu_us(self) -> float:
        """PostgreSQL's CPU time per event, in microseconds (NaN: not measured)."""
        return per_event_us(self.postgres_cpu_s, self._cpu_events)

    @property
    def _cpu_events(self) -> int:
        return self.events if self.cpu_events is None else self.cpu_events


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


async def count_existing(redis: Redis | RedisTargets, keys: list[str], chunk: int = 1000) -> int:
    """How many of `keys` (SPEC §4 keys) exist, in few round trips: on each key's
    family target at its stored key (`RedisTargets.key`) when given targets."""
    targets = as_targets(redis)
    by_client: dict[int, tuple[Client, list[str]]] = {}
    for key in keys:
        client = targets.master_for(key)
        by_client.setdefault(id(client), (client, []))[1].append(targets.key(key))
    total = 0
    for client, stored in by_client.values():
        for i in range(0, len(stored), chunk):
            total += int(await client.exists(*stored[i : i + chunk]))
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
    """Start a worker on the preloaded topics and time it until everything landed.

    The worker's and PostgreSQL's CPU times are sampled at every poll (every 0.1 s);
    the CPU window runs from the last sample before the timed window to the last one.
    """
    worker = WorkerProcess(env.env, log_path, loop=loop, processes=processes)
    redis = RedisTargets.from_settings(env.settings)
    keys = expected.redis_keys()
    worker.start()
    conn: asyncpg.Connection[asyncpg.Record] | None = None
    try:
        conn = await _connect_migrated(env, worker, timeout_s)
        postgres = PostgresCpu.find(conn)
        samples: list[CpuSample] = []
        deadline = time.monotonic() + timeout_s
        while True:
            polled_at = time.time()
            samples.append(
                CpuSample(
                    polled_at,
                    worker.cpu_times(),
                    postgres.sample() if postgres else {},
                )
            )
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
        start, end = window_start(samples, stable), samples[-1]
        exclude = {conn.get_server_pid(), *await postgres.foreign(conn)} if postgres else set()
        return Throughput(
            events=total - before,
            seconds=polled_at - stable,
            complete=True,
            startup_s=first - worker.started_at,
            peak_rss_mb=peak,
            processes=processes,
            settle_s=stable - first,
            worker_cpu_s=cpu_delta(start.worker, end.worker),
            postgres_cpu_s=cpu_delta(start.postgres, end.postgres, exclude) if postgres else None,
            cpu_events=total - await progress.events_stored_before(conn, start.at),
        )
    finally:
        worker.stop()
        if conn is not None:
            await conn.close()
        await redis.aclose()


FLOOR_APP = "streams.tools.bench.faust_floor"


async def run_faust_floor(
    env: BenchEnv, prefix: str, total: int, log_path: Path, timeout_s: float
) -> Throughput:
    """The Faust floor (`faust_floor.py`) on the preloaded topics, timed from its
    `Worker ready` until its group has committed all `total` offsets.

    Faust commits every `broker_commit_interval` (1 s), so the end is seen up to
    a second late: the rate is a lower bound, and the CPU window holds that
    second of an idle worker too (little). The CPU per event is the figure
    that matters: what Faust alone costs per event.
    """
    worker = WorkerProcess(env.env, log_path, app=FLOOR_APP)
    admin = AIOKafkaAdminClient(**kafka_options(env.settings))
    await admin.start()
    worker.start()
    try:
        samples: list[CpuSample] = []
        deadline = time.monotonic() + timeout_s
        while True:
            polled_at = time.time()
            samples.append(CpuSample(polled_at, worker.cpu_times(), {}))
            if not worker.alive():
                raise RuntimeError(f"the Faust floor exited:\n{worker.log_tail()}")
            done = await committed(admin, env.settings.app_id, prefix)
            if done >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"Faust floor committed {done} of {total} in {timeout_s} s")
            await asyncio.sleep(0.1)
        ready = last_ready(worker.log_path.read_text(errors="replace")) or samples[0].at
        start = window_start(samples, ready)
        return Throughput(
            events=total,
            seconds=polled_at - ready,
            complete=True,
            startup_s=ready - worker.started_at,
            peak_rss_mb=worker.peak_rss_mb(),
            worker_cpu_s=cpu_delta(start.worker, samples[-1].worker),
        )
    finally:
        worker.stop()
        await admin.close()


async def committed(admin: AIOKafkaAdminClient, group: str, prefix: str) -> int:
    """Offsets `group` committed on the topics named `prefix…`, summed: the messages
    it consumed, on topics whose offsets count from 0 (no transactions)."""
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(
        meta.offset
        for tp, meta in offsets.items()
        if tp.topic.startswith(prefix) and meta.offset > 0
    )


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


# --- the hand-written baselines ---------------------------------------------------
# Their SQL stays spelled here, on purpose: the plain table and its INSERTs are what is
# measured (a team's own code), so they must not become rpcache's store.
BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_events (
    event_id    uuid PRIMARY KEY,
    type        text        NOT NULL,
    user_id     text        NOT NULL,
    session_id  uuid,
    occurred_at timestamptz NOT NULL,
    payload     jsonb       NOT NULL
)
"""
BASELINE_INSERT = (
    "INSERT INTO baseline_events VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
    " ON CONFLICT (event_id) DO NOTHING"
)
BATCH_RECORDS = 3000
"""Most records one `getmany` of the hand-batched consumer returns."""
BATCH_WAIT_MS = 500
"""Longest one `getmany` of the hand-batched consumer waits for records, in ms."""


def _row(event: Event, raw: dict[str, Any], value: bytes) -> tuple[Any, ...]:
    """The `baseline_events` row of one event."""
    return (
        event.event_id,
        event.type,
        event.user_id,
        raw.get("session_id"),
        event.occurred_at,
        value.decode(),
    )


async def _connect_baseline(env: BenchEnv) -> asyncpg.Connection[asyncpg.Record]:
    conn = await asyncpg.connect(
        env.settings.database_url.get_secret_value(), **asyncpg_options(env.settings)
    )
    await conn.execute(BASELINE_SCHEMA)
    return conn


@dataclass
class _Window:
    """The timed and CPU window of an in-process consumer (the baselines): opened at
    its first message, closed after its last; this process's CPU and PostgreSQL's
    (other databases' backends excluded)."""

    postgres: PostgresCpu | None
    started: float = 0.0
    cpu_before: float = 0.0
    pg_before: CpuTimes | None = None

    def open(self) -> None:
        """At the first message (later calls do nothing)."""
        if self.pg_before is None:
            self.started, self.cpu_before = time.monotonic(), self_cpu_s()
            self.pg_before = self.postgres.sample() if self.postgres else {}

    async def close(
        self, conn: asyncpg.Connection[asyncpg.Record]
    ) -> tuple[float, float, float | None]:
        """(seconds, this process's CPU seconds, PostgreSQL's CPU seconds or None)."""
        elapsed, cpu = time.monotonic() - self.started, self_cpu_s() - self.cpu_before
        if self.postgres is None or self.pg_before is None:
            return elapsed, cpu, None
        after = self.postgres.sample()
        return elapsed, cpu, cpu_delta(self.pg_before, after, await self.postgres.foreign(conn))


async def run_batched(env: BenchEnv, prefix: str, total: int, timeout_s: float) -> Throughput:
    """The same events through the hand-batched consumer; see the module docstring."""
    settings = env.settings
    conn = await _connect_baseline(env)
    window = _Window(PostgresCpu.find(conn))
    redis = redis_from_settings(settings)
    consumer = plain_consumer(settings, group=f"{settings.app_id}-batched", auto_commit=False)
    consumer.subscribe(source_topics(prefix))
    await consumer.start()
    done = 0
    try:
        deadline = time.monotonic() + timeout_s
        while done < total and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=BATCH_WAIT_MS, max_records=BATCH_RECORDS)
            if not batches:
                continue
            window.open()
            messages = [m for records in batches.values() for m in records]
            await _store_batch(conn, redis, messages, prefix, env)
            await consumer.commit()
            done += len(messages)
        elapsed, cpu, pg_cpu = await window.close(conn)
    finally:
        await consumer.stop()
        await redis.aclose()
        await conn.close()
    return Throughput(
        events=done,
        seconds=elapsed if done else math.nan,
        complete=done >= total,
        worker_cpu_s=cpu if done else None,
        postgres_cpu_s=pg_cpu if done else None,
    )


async def _store_batch(
    conn: asyncpg.Connection[asyncpg.Record],
    redis: Redis,
    messages: list[Any],
    prefix: str,
    env: BenchEnv,
) -> None:
    """One batch of the hand-batched consumer: decode, one INSERT in one transaction,
    one Redis pipeline. An event that does not decode is skipped (no dead letters)."""
    rows: list[tuple[Any, ...]] = []
    projected: list[tuple[dict[str, Any], datetime]] = []
    for m in messages:
        event = decode_event(
            m.value,
            topic=m.topic.removeprefix(prefix),
            max_bytes=env.settings.max_event_bytes,
            max_audio_bytes=env.settings.voice_max_audio_bytes,
        )
        if isinstance(event, Rejection):
            continue
        raw = orjson.loads(m.value)
        rows.append(_row(event, raw, m.value))
        projected.append((raw, event.occurred_at))
    if not rows:
        return
    async with conn.transaction():
        await conn.executemany(BASELINE_INSERT, rows)
    async with redis.pipeline(transaction=False) as pipe:
        for raw, at in projected:
            for _queued in redis_commands(pipe, raw, at):
                pass
        await pipe.execute()


async def run_baseline(env: BenchEnv, prefix: str, total: int, cap_s: float) -> Throughput:
    """The same events through the naive per-event consumer; see the module docstring."""
    conn = await _connect_baseline(env)
    window = _Window(PostgresCpu.find(conn))
    redis = redis_from_settings(env.settings)
    consumer = plain_consumer(env.settings, group=f"{env.settings.app_id}-naive")
    consumer.subscribe(source_topics(prefix))
    await consumer.start()
    done = 0
    try:
        async for message in consumer:
            window.open()
            event = decode_event(
                message.value,
                topic=message.topic.removeprefix(prefix),
                max_bytes=env.settings.max_event_bytes,
            )
            if not isinstance(event, Rejection):
                raw = orjson.loads(message.value)
                await conn.execute(BASELINE_INSERT, *_row(event, raw, message.value))
                await naive_redis(redis, raw, event.occurred_at)
            done += 1
            if done >= total or time.monotonic() - window.started > cap_s:
                break
        elapsed, cpu, pg_cpu = await window.close(conn)
    finally:
        await consumer.stop()
        await redis.aclose()
        await conn.close()
    return Throughput(
        events=done,
        seconds=elapsed,
        complete=done >= total,
        worker_cpu_s=cpu,
        postgres_cpu_s=pg_cpu,
    )


async def naive_redis(redis: Redis, e: dict[str, Any], at: datetime) -> None:
    """The naive baseline's Redis commands for one event, each awaited in turn."""
    for command in redis_commands(redis, e, at):
        await command


def redis_commands(client: Any, e: dict[str, Any], at: datetime) -> Iterator[Any]:
    """The Redis commands a hand-written consumer sends for one event (`e`, the decoded
    JSON; `at`, its occurred_at), one `client` call per yield, in order.

    `client` is anything with redis-py's command methods: a `Redis` client (each call
    returns an awaitable, which the naive baseline awaits before the next call is made)
    or a `Pipeline` (each call queues the command; the hand-batched baseline sends them
    all with one `execute()`). Incremental (HINCRBY, ZADD) rather than absolute, as
    such code usually is; the keys are the contract's (schemas/keys.py).
    """
    kind, day = e["type"], stats_key(at.astimezone(UTC).date())
    stats_ttl = int(STATS_TTL.total_seconds())
    if kind == "user.login":
        key = user_state_key(e["user_id"])
        prefs = orjson.dumps(e.get("preferences") or {}).decode()
        yield client.hset(key, mapping={"last_login": e["occurred_at"], "preferences": prefs})
        yield client.expire(key, USER_STATE_TTL)
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
        yield client.hset(key, mapping=fields)
        yield client.expire(key, SESSION_TTL)
        user = user_state_key(e["user_id"])
        yield client.hset(user, "current_session_id", e["session_id"])
        yield client.hincrby(user, "daily_session_count", 1)
        yield client.expire(user, USER_STATE_TTL)
        yield client.hincrby(day, "total_sessions_today", 1)
        yield client.hincrby(day, "active_sessions", 1)
        yield client.expire(day, stats_ttl)
    elif kind == "session.activity":
        key = session_key(e["session_id"])
        stats = orjson.dumps(e.get("performance_stats") or {}).decode()
        yield client.hset(
            key, mapping={"last_activity": e["occurred_at"], "performance_stats": stats}
        )
        yield client.expire(key, SESSION_TTL)
    elif kind == "session.ended":
        yield client.delete(session_key(e["session_id"]))
        yield client.hset(user_state_key(e["user_id"]), "current_session_id", "")
        yield client.hincrby(day, "active_sessions", -1)
    elif kind == "ai.response":
        if not e.get("cache_hit"):
            value = orjson.dumps({k: e[k] for k in ("response", "provider", "model")}).decode()
            yield client.set(ai_response_key_for_hash(H(e["prompt"])), value, ex=AI_RESPONSE_TTL)
        yield client.hincrby(day, "ai_hits" if e.get("cache_hit") else "ai_misses", 1)
        yield from _latency_commands(client, "response_time", e, at)
    elif kind == "voice.synthesized":
        if not e.get("cache_hit"):
            key = voice_key_for_hash(e["speaker_id"], H(e["text"]))
            yield client.set(key, e["audio"], ex=VOICE_TTL)
        yield client.hincrby(day, "voice_hits" if e.get("cache_hit") else "voice_misses", 1)
        yield from _latency_commands(client, "synthesis_time", e, at)
    else:  # ai.failed, voice.failed
        yield client.hincrby(day, "failed", 1)


def _latency_commands(client: Any, metric: Any, e: dict[str, Any], at: datetime) -> Iterator[Any]:
    member = f"{e['latency_ms']}:{e['event_id']}"
    for window, span in METRIC_WINDOWS.items():
        key = metrics_key(metric, window)
        yield client.zadd(key, {member: at.timestamp()})
        yield client.zremrangebyscore(key, "-inf", at.timestamp() - span.total_seconds())
        yield client.expire(key, METRICS_TTL)


# --- the ceiling ------------------------------------------------------------------
async def run_ceiling(env: BenchEnv, prefix: str, total: int, timeout_s: float) -> Throughput:
    """Fetch and decode every preloaded event, nothing else (its CPU time: this process's)."""
    consumer = plain_consumer(env.settings, group=None)  # no group: every partition, from 0
    consumer.subscribe(source_topics(prefix))
    await consumer.start()
    done, rejected, started, cpu_before = 0, 0, 0.0, 0.0
    try:
        deadline = time.monotonic() + timeout_s
        while done < total and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batches and not done:
                started, cpu_before = time.monotonic(), self_cpu_s()
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
        cpu = self_cpu_s() - cpu_before
    finally:
        await consumer.stop()
    if rejected:
        raise RuntimeError(f"{rejected} preloaded events did not decode")
    return Throughput(
        events=done,
        seconds=elapsed if done else math.nan,
        complete=done >= total,
        worker_cpu_s=cpu if done else None,
    )
