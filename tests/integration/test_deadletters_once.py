"""With nothing failing, every dead letter reaches `{prefix}dead-letters` exactly once.

The outbox (`dead_letters`) is flushed by each agent's pipeline after a batch
with dead letters and by a 30 s timer, in every worker process: flushes run
side by side. Each one claims its rows (`FOR UPDATE SKIP LOCKED`) before it
publishes them, so two flushes never publish the same row. After a failure
a row may go out again (at least once), with the same `dead_letter_id`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from schemas.messages import dead_letter_id
from streams.settings import Settings, get_settings
from streams.worker.runtime import open_pool
from streams.write import deadletters
from tests.integration.conftest import RUN, _with_db, eventually, isolated_run

pytestmark = pytest.mark.integration

SOURCES = ("session-events", "inference-events", "synthesis-events")


def _bad(n: int, suffix: str) -> bytes:
    """A bad message of one of three kinds, unique by `n`."""
    kind = n % 3
    if kind == 0:
        return b'{"not json ' + str(n).encode()
    if kind == 1:
        return orjson.dumps([n, suffix])  # not_an_object
    return orjson.dumps({"event_id": str(uuid.uuid4()), "type": "ai.guessed", "n": n})


async def _read_topic(
    settings: Settings, topic: str, want: int, linger_s: float = 3.0
) -> list[dict[str, Any]]:
    """Every message of `topic` once `want` arrived and `linger_s` passed with no more."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    seen: list[dict[str, Any]] = []
    try:

        async def read() -> int:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(orjson.loads(m.value) for m in msgs)
            return len(seen)

        await eventually(read, lambda n: n >= want, timeout_s=60)
        for _ in range(int(linger_s / 0.5)):
            await read()
    finally:
        await consumer.stop()
    return seen


async def test_worker_publishes_each_dead_letter_once(test_env: dict[str, str]) -> None:
    """Bad input on the three topics at once, in rounds: the agents flush side by side."""
    rounds, per_topic, keys = 8, 9, 12
    async with isolated_run(test_env, "dlonce", 1) as run:
        prefix, pub = run.settings.topic_prefix, run.publisher
        n = 0
        for _ in range(rounds):
            for suffix in SOURCES:
                for _ in range(per_topic):
                    key = f"dl-{n % keys}".encode()  # spread over the partitions
                    await pub.publish_raw(prefix + suffix, key, _bad(n, suffix), wait=False)
                    n += 1
            await pub.flush()
            await asyncio.sleep(0.1)  # the next round lands in other batches
        # A good event per family after them: the offsets moved on.
        await pub.session_started("dl-good", speaker_id=1)

        await eventually(
            lambda: run.pool.fetchval(
                "SELECT count(*) FROM dead_letters WHERE published_at IS NOT NULL"
            ),
            lambda c: c == n,
            timeout_s=60,
        )
        published = await _read_topic(run.settings, prefix + "dead-letters", n)

        by_source = Counter(
            (m["source_topic"], m["partition"], m["offset"], m["reason"]) for m in published
        )
        assert len(by_source) == n
        assert [s for s, c in by_source.items() if c > 1] == []
        by_id = Counter(m["dead_letter_id"] for m in published)
        assert len(by_id) == n and max(by_id.values()) == 1
        assert all(
            m["dead_letter_id"]
            == dead_letter_id(m["source_topic"], m["partition"], m["offset"], m["reason"])
            for m in published
        )
        assert {m["source_topic"].removeprefix(prefix) for m in published} == set(SOURCES)
        assert len({(m["source_topic"], m["partition"]) for m in published}) > len(SOURCES)
        assert run.worker.log_text().count("[^Worker]: Ready") == 1  # no restart


# --- flush itself, against a database of its own -----------------------------------
@asynccontextmanager
async def _outbox_db(rows: int) -> AsyncIterator[Settings]:
    """A migrated database with `rows` unpublished dead letters; dropped at the end."""
    name = f"rpcache_test_{RUN}_dlflush"
    base = get_settings()
    url = _with_db(base.database_url.get_secret_value(), name)
    admin = await asyncpg.connect(_with_db(base.database_url.get_secret_value(), "postgres"))
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    settings = base.model_copy(update={"database_url": SecretStr(url), "pg_pool_size": 2})
    try:
        pool = await open_pool(settings)  # migrates
        await pool.executemany(
            "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, message_key,"
            " reason, detail, original) VALUES ($1, $2, $3, $4, 'invalid_json', 'bad', $5)",
            [
                (f"t.{SOURCES[i % 3]}", i % 4, i, f"k{i}".encode(), b"{" * (i % 7))
                for i in range(rows)
            ],
        )
        await pool.close()
        yield settings
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Recorder:
    """A `Publish` that remembers each message and which flusher sent it."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []

    def publisher(self, flusher: int, fail_at: int | None = None) -> deadletters.Publish:
        calls = 0

        async def publish(topic: str, key: bytes | None, value: bytes) -> None:
            nonlocal calls
            calls += 1
            if calls == fail_at:
                raise ConnectionError("broker away")
            await asyncio.sleep(0.002)  # a broker round trip: the flushes interleave
            self.sent.append((flusher, orjson.loads(value)))

        return publish


async def test_concurrent_flushes_publish_each_row_once() -> None:
    """5 flushes at once over 200 rows, from 3 pools (3 processes, 2 of them with 2 tasks)."""
    rows = 200
    async with _outbox_db(rows) as settings:
        pools = [await open_pool(settings) for _ in range(3)]
        try:
            rec = Recorder()
            counts = await asyncio.gather(
                *(
                    deadletters.flush(pools[i % 3], rec.publisher(i), "dl", batch=20)
                    for i in range(5)
                )
            )
            ids = Counter(m["dead_letter_id"] for _, m in rec.sent)
            assert sum(counts) == rows == len(rec.sent)
            assert len(ids) == rows and max(ids.values()) == 1
            assert len({m["offset"] for _, m in rec.sent}) == rows
            assert sum(1 for c in counts if c) > 1  # they really ran side by side
            left = await pools[0].fetchval(
                "SELECT count(*) FROM dead_letters WHERE published_at IS NULL"
            )
            assert left == 0
            assert await deadletters.flush(pools[0], rec.publisher(9), "dl") == 0
        finally:
            for pool in pools:
                await pool.close()


async def test_a_failed_flush_leaves_its_rows_for_the_next_one() -> None:
    """At least once: a publish that fails mid-claim marks nothing; the next flush sends
    the claim again, with the same dead_letter_id."""
    async with _outbox_db(30) as settings:
        pool = await open_pool(settings)
        try:
            rec = Recorder()
            with pytest.raises(ConnectionError):
                await deadletters.flush(pool, rec.publisher(0, fail_at=6), "dl", batch=10)
            sent_before = [m for _, m in rec.sent]
            assert len(sent_before) == 5
            assert (
                await pool.fetchval("SELECT count(*) FROM dead_letters WHERE published_at IS NULL")
                == 30
            )
            rec.sent.clear()
            assert await deadletters.flush(pool, rec.publisher(1), "dl", batch=10) == 30
            again = {m["offset"]: m for _, m in rec.sent}
            assert len(again) == 30
            for m in sent_before:  # the repeats carry the id they had
                assert again[m["offset"]] == m
        finally:
            await pool.close()
