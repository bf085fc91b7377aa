"""Chaos: kill, stop and restart every component under load; nothing may be lost.

Run with `make chaos` (pytest -m chaos). Each scenario gets a database,
Redis db and topics of its own, a steady load across all three families
(tests/integration/load.py) and a ground-truth model; it passes when
PostgreSQL holds exactly the produced event_ids, every counter equals the
model and every Redis key equals what PostgreSQL implies, with a TTL.
Figures go to .cache/chaos-report.json for the README table.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.keys import stats_key
from streams.read.reader import CacheReader
from streams.tools.stack import kill_service, start_service, stop_service
from tests.integration.conftest import (
    IsolatedRun,
    WorkerProcess,
    eventually,
    isolated_run,
    stored_count,
)
from tests.integration.load import Load, verify, wait_all_stored, write_report

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
CHAOS_ENV = {
    "KAFKA_SESSION_TIMEOUT_S": "6",
    "REDIS_WATCH_INTERVAL_S": "1",
    # Above the ~15 s a consumer group takes to re-form after the broker restart
    # (test_kafka_killed_and_restarted_under_load saw a 15 s stall fire once, 2026-12-06);
    # below the 60 s the watchdog scenario waits for its exit.
    "WATCHDOG_STALL_S": "25",
    "WATCHDOG_INTERVAL_S": "1",
    "RETRY_MAX_BACKOFF_S": "1",
}


@pytest.fixture(autouse=True)
def quiet_kafka_client() -> Iterator[None]:
    """The test's own producer logs every failed connection while Kafka is down;
    those hundreds of expected lines would bury a failure's own report."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def stack_back_up() -> Iterator[None]:
    """Whatever a failed scenario left stopped is started again for the next one."""
    yield
    for name in ("kafka", "redis", "postgres"):
        start_service(name)


@asynccontextmanager
async def scenario(
    test_env: dict[str, str], name: str, db: int, **env: str
) -> AsyncIterator[IsolatedRun]:
    async with isolated_run(test_env, f"chaos_{name}", db, **{**CHAOS_ENV, **env}) as run:
        yield run


def catch_up(run: IsolatedRun, load: Load) -> asyncio.Task[float]:
    """Time from now (the fault is over) until every event produced so far is stored."""
    backlog = list(load.model.produced)
    start = time.monotonic()

    async def measure() -> float:
        await eventually(
            lambda: stored_count(run.pool, backlog),
            lambda n: n == len(backlog),
            timeout_s=180,
            interval_s=0.05,
        )
        return time.monotonic() - start

    return asyncio.create_task(measure())


async def finish(
    run: IsolatedRun, load: Load, name: str, recovery: asyncio.Task[float], **extra: Any
) -> None:
    """Wait until everything produced is stored and projected, verify, report."""
    await wait_all_stored(run.pool, load.model, timeout_s=180)
    recovered_s = await recovery
    await asyncio.sleep(1.5)  # the last Redis pipelines and the sweeper
    figures = await verify(run.pool, run.redis, run.settings, load.model)
    write_report(
        name,
        {
            **figures,
            "recover_s": round(recovered_s, 1),
            "failed_sends": load.model.failed_sends,
            **extra,
        },
    )


async def test_kill_9_worker_ten_times_under_load(test_env: dict[str, str]) -> None:
    async with scenario(test_env, "kill9", 10) as run:
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        rng = random.Random(9)
        for _ in range(10):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            run.worker.kill()
            run.worker.start()
            back = catch_up(run, load)
            await run.worker.wait_ready()
        load.stop()
        await producing
        await finish(run, load, "1. kill -9 worker x10", back, rounds=10)


async def test_sigterm_under_load_is_a_clean_stop(test_env: dict[str, str]) -> None:
    async with scenario(test_env, "sigterm", 9) as run:
        load = Load(run.publisher, rate=200)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        assert run.worker.stop() == 0  # SIGTERM: exits cleanly
        await asyncio.sleep(2)
        run.worker.start()
        back = catch_up(run, load)
        await run.worker.wait_ready()
        await asyncio.sleep(3)
        load.stop()
        await producing
        await finish(run, load, "2. SIGTERM worker, restart", back)


async def test_kafka_killed_and_restarted_under_load(test_env: dict[str, str]) -> None:
    async with scenario(test_env, "kafka", 8) as run:
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        kill_service("kafka")
        await asyncio.sleep(5)
        start_service("kafka")
        back = catch_up(run, load)
        await asyncio.sleep(6)
        load.stop()
        await producing
        assert run.worker.proc is not None and run.worker.proc.poll() is None, "worker died"
        await finish(run, load, "3. Kafka broker killed 5 s", back)


async def test_watchdog_restarts_a_stalled_consumer(test_env: dict[str, str]) -> None:
    """A database lock wedges the consumer: the watchdog exits 75, a restart catches up."""
    async with scenario(test_env, "watchdog", 7) as run:
        load = Load(run.publisher, rate=100)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(3)
        async with run.pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            proc = run.worker.proc
            assert proc is not None

            async def exit_code() -> int | None:
                return proc.poll()

            code = await eventually(exit_code, lambda rc: rc is not None, timeout_s=60)
            assert code == 75, "the watchdog did not fire"
        assert "watchdog: consumer stalled" in run.worker.log_text()
        run.worker.start()  # the supervisor's part
        await run.worker.wait_ready()
        back = catch_up(run, load)
        await asyncio.sleep(3)
        load.stop()
        await producing
        await finish(run, load, "3b. stalled consumer (DB lock), watchdog", back)


async def committed(run: IsolatedRun) -> int:
    """Sum of the group's committed offsets on the three source topics."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=run.settings.kafka_servers,
        group_id=run.settings.app_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        total = 0
        for suffix in ("session-events", "inference-events", "synthesis-events"):
            topic = run.settings.topic_prefix + suffix
            for p in range(run.settings.topic_partitions):
                total += (await consumer.committed(TopicPartition(topic, p))) or 0
        return total
    finally:
        await consumer.stop()


async def test_redis_down_30s_offsets_held_and_reads_from_postgres(
    test_env: dict[str, str],
) -> None:
    async with scenario(test_env, "redis", 6) as run:
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(3)
        stop_service("redis")
        await asyncio.sleep(3)
        held = await committed(run)
        stored_while_down = []
        for _ in range(27):
            await asyncio.sleep(1)
            stored_while_down.append(await run.pool.fetchval("SELECT count(*) FROM events"))
        assert await committed(run) == held, "offsets were committed without projecting"
        assert len(set(stored_while_down)) == 1, "batches went on without Redis"
        # Readers are served from PostgreSQL meanwhile.
        open_ids = [
            r["session_id"]
            for r in await run.pool.fetch(
                "SELECT session_id::text FROM sessions WHERE status = 'active' LIMIT 5"
            )
        ]
        assert open_ids
        async with CacheReader.from_settings(run.settings) as reader:
            for sid in open_ids:
                read = await reader.get_session(sid)
                assert read.source == "postgres" and read.value is not None
                assert read.value["status"] == "active"
        start_service("redis")
        back = catch_up(run, load)
        await asyncio.sleep(5)
        load.stop()
        await producing
        await finish(run, load, "4. Redis stopped 30 s", back, down_s=30)


async def test_postgres_stopped_then_connections_reset(test_env: dict[str, str]) -> None:
    async with scenario(test_env, "postgres", 5) as run:
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(3)
        stop_service("postgres")
        await asyncio.sleep(8)
        start_service("postgres")
        back = catch_up(run, load)
        await asyncio.sleep(3)
        for _ in range(5):  # connections reset mid-batch
            await run.pool.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.7)
        load.stop()
        await producing
        await finish(run, load, "5. PostgreSQL stopped 8 s + 5 resets", back)


async def test_second_worker_joins_and_leaves(test_env: dict[str, str]) -> None:
    async with scenario(test_env, "rebalance", 4) as run:
        load = Load(run.publisher, rate=200)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(3)
        second = WorkerProcess(run.env, "chaos_rebalance_2")
        second.start()
        await second.wait_ready()
        await asyncio.sleep(6)
        assert second.stop() == 0
        back = catch_up(run, load)
        await asyncio.sleep(4)
        load.stop()
        await producing
        await finish(run, load, "6. second worker joins and leaves", back)


async def test_replay_from_earliest_changes_nothing(test_env: dict[str, str]) -> None:
    async with scenario(test_env, "earliest", 3, AUTO_REBUILD="false") as run:
        load = Load(run.publisher, rate=200)
        await load.run_for(6)
        await finish(run, load, "8. replay from the earliest offset", catch_up(run, load))
        before_pg = await pg_fingerprint(run)
        before_redis = {k: await run.redis.dump(k) async for k in run.redis.scan_iter()}
        day_before = datetime.now(run.settings.tz).date()
        assert run.worker.stop() == 0
        await reset_group_to_earliest(run)
        assert await committed(run) == 0
        run.worker.start()
        await run.worker.wait_ready()
        total = len(load.model.produced)
        consumed = await eventually(lambda: committed(run), lambda n: n >= total, timeout_s=60)
        assert consumed >= total  # everything consumed a second time
        await asyncio.sleep(1.5)
        assert await pg_fingerprint(run) == before_pg
        await verify(run.pool, run.redis, run.settings, load.model)
        after = {k async for k in run.redis.scan_iter()}
        # Every batch also writes today's stats hash: a run across midnight has a new one.
        day_after = datetime.now(run.settings.tz).date()
        if day_after != day_before:
            after.discard(stats_key(day_after))
        missing, extra = set(before_redis) - after, after - set(before_redis)
        assert not missing and not extra, (
            f"replay from earliest changed the Redis keys: {len(missing)} missing"
            f" {sorted(missing)[:10]}, {len(extra)} extra {sorted(extra)[:10]}"
        )


async def pg_fingerprint(run: IsolatedRun) -> tuple[Any, ...]:
    return (
        await run.pool.fetchval("SELECT count(*) FROM events"),
        await run.pool.fetchval("SELECT sum(value) FROM daily_counters"),
        await run.pool.fetchval("SELECT sum(version) FROM sessions"),
        await run.pool.fetchval("SELECT sum(use_count) FROM ai_responses"),
        await run.pool.fetchval("SELECT sum(use_count) FROM voice_clips"),
        await run.pool.fetchval("SELECT count(*) FROM dead_letters"),
    )


async def reset_group_to_earliest(run: IsolatedRun) -> None:
    """What `kafka-consumer-groups --reset-offsets --to-earliest` does, group stopped."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=run.settings.kafka_servers,
        group_id=run.settings.app_id,
        enable_auto_commit=False,
    )
    partitions = [
        TopicPartition(run.settings.topic_prefix + s, p)
        for s in ("session-events", "inference-events", "synthesis-events")
        for p in range(run.settings.topic_partitions)
    ]
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


_ = signal  # SIGTERM is sent by WorkerProcess.stop()
