"""Kafka features producers use: every compression codec, transactions, headers.

Producers other than `EventPublisher` (librdkafka services, Java services,
kcat) often compress batches with lz4, snappy or zstd and may use Kafka
transactions. Each case is produced here by a real producer to the real
broker, and the worker must project the events (or skip an aborted
transaction's) and keep consuming behind them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from schemas.events import SessionStarted
from schemas.keys import session_key
from streams.settings import Settings
from tests.integration.conftest import WorkerProcess, eventually, isolated_run, stored_count

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")


def _started(user: str) -> SessionStarted:
    return SessionStarted(
        event_id=str(uuid.uuid4()),
        occurred_at=datetime.now(UTC),
        user_id=user,
        session_id=str(uuid.uuid4()),
        speaker_id=3,
    )


@pytest.mark.parametrize("codec", CODECS)
async def test_compressed_batches_are_consumed(
    codec: str,
    settings: Settings,
    worker: WorkerProcess,
    pool: asyncpg.Pool,
    redis: Redis,
) -> None:
    """A batch of 20 events compressed with `codec` lands whole, and so does the next one."""
    topic = f"{settings.topic_prefix}session-events"
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_servers, compression_type=codec, linger_ms=50
    )
    await producer.start()
    try:
        events = [_started(f"codec-{codec}-{i % 4}") for i in range(20)]
        batch = producer.create_batch()
        for e in events:
            assert batch.append(key=None, value=e.to_json(), timestamp=None) is not None
        await (await producer.send_batch(batch, topic, partition=0))
        after = _started(f"codec-{codec}-after")
        await producer.send_and_wait(topic, after.to_json(), key=after.user_id.encode())
    finally:
        await producer.stop()
    ids = [e.event_id for e in [*events, after]]
    await eventually(lambda: stored_count(pool, ids), lambda n: n == len(ids))
    for e in [*events, after]:
        assert await redis.hget(session_key(e.session_id), "user_id") == e.user_id
    assert "UnsupportedCodecError" not in worker.log_text()


async def test_aborted_transactions_are_skipped(
    settings: Settings, worker: WorkerProcess, pool: asyncpg.Pool, redis: Redis
) -> None:
    """read_committed: a transactional producer's aborted events never land, committed ones do."""
    topic = f"{settings.topic_prefix}session-events"
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_servers,
        transactional_id=f"rpcache-test-{uuid.uuid4().hex[:8]}",
        compression_type="zstd",
    )
    await producer.start()
    try:
        aborted, committed = _started("txn-user"), _started("txn-user")
        await producer.begin_transaction()
        await producer.send_and_wait(topic, aborted.to_json(), key=b"txn-user")
        await producer.send_and_wait(topic, b"x", key=b"txn-user", headers=[("trace", b"1")])
        await producer.abort_transaction()
        await producer.begin_transaction()
        await producer.send_and_wait(
            topic, committed.to_json(), key=b"txn-user", headers=[("trace-id", b"abc")]
        )
        await producer.commit_transaction()
    finally:
        await producer.stop()
    await eventually(lambda: stored_count(pool, [committed.event_id]), lambda n: n == 1)
    assert await redis.hget(session_key(committed.session_id), "user_id") == "txn-user"
    assert await stored_count(pool, [aborted.event_id]) == 0
    assert await redis.exists(session_key(aborted.session_id)) == 0
    # The aborted garbage (b"x") was never read either: no dead letter for it.
    dead = await pool.fetchval(
        "SELECT count(*) FROM dead_letters WHERE topic = $1 AND original = $2", topic, b"x"
    )
    assert dead == 0


async def test_transaction_markers_are_not_a_stall(test_env: dict[str, str]) -> None:
    """After a transactional producer, the partition's end offset stays one past the last
    record the worker receives (the commit marker); the watchdog must not exit for it."""
    env = {"WATCHDOG_STALL_S": "2", "WATCHDOG_INTERVAL_S": "0.5"}
    async with isolated_run(test_env, "txnwatch", 8, **env) as run:
        topic = f"{run.settings.topic_prefix}session-events"
        producer = AIOKafkaProducer(
            bootstrap_servers=run.settings.kafka_servers,
            transactional_id=f"rpcache-test-{uuid.uuid4().hex[:8]}",
        )
        await producer.start()
        try:
            event = _started("txn-watch")
            await producer.begin_transaction()
            await producer.send_and_wait(topic, event.to_json(), key=b"txn-watch", partition=0)
            await producer.commit_transaction()
        finally:
            await producer.stop()
        await eventually(lambda: stored_count(run.pool, [event.event_id]), lambda n: n == 1)
        await asyncio.sleep(6)  # three stall periods with the marker as the only "lag"
        assert run.worker.proc is not None and run.worker.proc.poll() is None, (
            run.worker.log_text()[-2000:]
        )
        assert "consumer stalled" not in run.worker.log_text()
