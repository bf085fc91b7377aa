"""CacheReader against real servers: projections, read-through, a Redis outage, a replica.

The projection tests read what the shared worker wrote, wherever this run's
families are (tests/integration/topology.py): one Redis, or, under
`make test-sentinel`, a Sentinel master/replica set per family, where session
and user-state reads come from the replica (the test waits until it has the
master's writes), or, under `make test-cluster`, the local Redis Cluster in
either key layout (session and user state from the replica of their slot's
master). The outage and replica tests run redis-server processes of
their own on free ports (never the shared one on 6379), stop and restart them,
and point a reader at them and at this run's PostgreSQL database, which the
shared worker fills; they are about one Redis and run in `make test` only.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from schemas import H
from schemas.keys import (
    ai_response_key,
    format_utc,
    session_key,
    user_state_key,
    voice_key,
)
from streams.publisher import EventPublisher
from streams.read.reader import BreakerState, CacheReader, ReadResult
from streams.settings import Settings
from tests.integration.conftest import PrivateRedis, WorkerProcess, eventually, on_one_redis
from tests.integration.topology import RedisKeys, cluster_layout, redis_topology

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel", "cluster", "cluster-design")
"""`make test` runs this module on one Redis, `make test-sentinel` on the Sentinel topology,
`make test-cluster` on the local Redis Cluster in both key layouts."""


# --- what the worker projected ------------------------------------------------------
@dataclass(frozen=True)
class Entities:
    user: str
    sid: str
    prompt: str
    ai_value: dict[str, Any]
    speaker: int
    text: str
    audio: str

    @property
    def keys(self) -> list[str]:
        return [
            session_key(self.sid),
            user_state_key(self.user),
            ai_response_key(self.prompt),
            voice_key(self.speaker, self.text),
        ]


@pytest.fixture(scope="module")
async def entities(
    worker: WorkerProcess, publisher: EventPublisher, redis_keys: RedisKeys, pool: asyncpg.Pool
) -> Entities:
    """One user with preferences, an open session, a cached AI response and voice clip."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    at = datetime.now(UTC).replace(microsecond=0)
    await publisher.user_login(user, preferences={"lang": "ja"}, occurred_at=at)
    sid = await publisher.session_started(
        user, speaker_id=6, conversation_context={"scene": "cafe"}, occurred_at=at
    )
    prompt = f"こんにちは {uuid.uuid4()}"
    await publisher.ai_response(
        user,
        sid,
        prompt=prompt,
        response="やあ",
        provider="groq",
        model="llama-3.1-70b",
        latency_ms=1250,
        occurred_at=at,
    )
    text = f"konnichiwa {uuid.uuid4()}"
    audio = base64.b64encode(b"RIFF" + os.urandom(2000)).decode()
    await publisher.voice_synthesized(
        user, sid, speaker_id=6, text=text, audio_b64=audio, latency_ms=640, occurred_at=at
    )
    e = Entities(
        user=user,
        sid=sid,
        prompt=prompt,
        ai_value={
            "prompt_hash": H(prompt),
            "response": "やあ",
            "provider": "groq",
            "model": "llama-3.1-70b",
            "cached_at": format_utc(at),
        },
        speaker=6,
        text=text,
        audio=audio,
    )

    async def projected() -> tuple[int, str | None]:
        return await redis_keys.exists(*e.keys), await redis_keys.hget(
            user_state_key(user), "current_session_id"
        )

    await eventually(projected, lambda r: r == (4, sid))
    await redis_keys.replicated()  # session reads may go to a replica
    return e


def where_read() -> list[tuple[str, str]]:
    """(target, node) that serve session, user-state, AI and voice reads from Redis
    (README, Redis topologies): one Redis serves all; on Sentinel each family's
    set, session and user state from its replica, the caches from their master;
    on the cluster (one target for all), session and user state from the replica
    of their slot's master, the caches from the master."""
    topology = redis_topology()
    if topology == "sentinel":
        return [("sessions", "replica"), ("sessions", "replica"), ("ai", "master"),
                ("voice", "master")]  # fmt: skip
    if cluster_layout(topology) is not None:
        both = "sessions+ai+voice"
        return [(both, "replica"), (both, "replica"), (both, "master"), (both, "master")]
    return [("sessions+ai+voice", "master")] * 4


def reader_settings(base: Settings, **update: Any) -> Settings:
    """`base` (this run's database) with other Redis URLs or reader knobs."""
    for name in ("redis_url", "redis_replica_url"):
        if isinstance(update.get(name), str):
            update[name] = SecretStr(update[name])
    return base.model_copy(update=update)


async def read_all(reader: CacheReader, e: Entities) -> list[ReadResult[Any]]:
    return [
        await reader.get_session(e.sid),
        await reader.get_user_state(e.user),
        await reader.get_ai_response(e.prompt),
        await reader.get_voice(e.speaker, e.text),
    ]


def assert_values(results: list[ReadResult[Any]], e: Entities) -> None:
    session, user, ai, voice = (r.value for r in results)
    assert session is not None and user is not None
    assert {k: session[k] for k in ("user_id", "status", "speaker_id", "conversation_context")} == {
        "user_id": e.user,
        "status": "active",
        "speaker_id": "6",
        "conversation_context": '{"scene":"cafe"}',
    }
    assert (user["current_session_id"], user["preferences"]) == (e.sid, '{"lang":"ja"}')
    assert user["daily_session_count"] == "1"
    assert ai == e.ai_value
    assert voice == e.audio


# --- projections and read-through on the shared Redis ----------------------------------
async def test_reads_projections_then_reads_through_deleted_keys(
    entities: Entities, redis_keys: RedisKeys, settings: Settings
) -> None:
    e = entities
    async with CacheReader.from_settings(reader_settings(settings, read_timeout_ms=1000)) as r:
        first = await read_all(r, e)
        assert [x.source for x in first] == ["redis"] * 4
        assert [(x.target, x.node) for x in first] == where_read()
        # On a cluster, each read went to the master of its stored key's slot (or its replica).
        assert [x.shard for x in first] == [await redis_keys.master_of(k) for k in e.keys]
        assert first[0].value == await redis_keys.hgetall(session_key(e.sid))
        assert first[1].value == await redis_keys.hgetall(user_state_key(e.user))
        assert first[2].value == orjson.loads(await redis_keys.get(ai_response_key(e.prompt)))
        assert_values(first, e)

        ttls = [await redis_keys.pttl(k) for k in e.keys]
        assert all(t > 0 for t in ttls)
        assert await redis_keys.delete(*e.keys) == 4
        await redis_keys.replicated()
        again = await read_all(r, e)
        assert [x.source for x in again] == ["postgres"] * 4
        assert [x.value for x in again] == [x.value for x in first]
        for key, before in zip(e.keys, ttls, strict=True):  # written back to the masters
            assert abs(await redis_keys.pttl(key) - before) < 3000, key
        await redis_keys.replicated()
        third = await read_all(r, e)
        assert [(x.source, x.target, x.node) for x in third] == [
            ("redis", *w) for w in where_read()
        ]
        assert [x.shard for x in third] == [x.shard for x in first]
        assert [x.value for x in third] == [x.value for x in first]

        s = r.stats
        assert (s.reads, s.hits, s.read_throughs, s.write_backs, s.misses) == (12, 8, 4, 4, 0)
        assert (s.fallbacks, s.redis_errors, s.breaker_state) == (0, 0, BreakerState.CLOSED)
        assert s.replica_hits == 2 * sum(node == "replica" for _, node in where_read())


async def test_expired_entries_are_misses_everywhere(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    sid = await publisher.session_started(user, speaker_id=1, occurred_at=long_ago)
    prompt = f"old {uuid.uuid4()}"
    await publisher.ai_response(
        user,
        sid,
        prompt=prompt,
        response="r",
        provider="p",
        model="m",
        latency_ms=5,
        occurred_at=long_ago,
    )
    await eventually(
        lambda: pool.fetchval(
            "SELECT count(*) FROM ai_responses WHERE prompt_hash = $1 AND cached_at IS NOT NULL",
            H(prompt),
        ),
        lambda n: n == 1,
    )
    await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM sessions WHERE session_id = $1", sid),
        lambda n: n == 1,
    )
    async with CacheReader.from_settings(reader_settings(settings, read_timeout_ms=1000)) as r:
        assert await r.get_ai_response(prompt) == ReadResult(None, "miss")
        assert await r.get_session(sid) == ReadResult(None, "miss")
        assert await r.get_voice(1, "never synthesized") == ReadResult(None, "miss")
        # The largest id an event may carry reaches PostgreSQL's integer column.
        assert await r.get_voice(2_147_483_647, "never") == ReadResult(None, "miss")
        assert r.stats.misses == 4
        assert r.stats.write_backs == 0
    assert await redis_keys.exists(ai_response_key(prompt), session_key(sid)) == 0


async def info(server: PrivateRedis, section: str) -> dict[str, Any]:
    client = server.client()
    try:
        return await client.info(section)
    finally:
        await client.aclose()


# --- Redis down -------------------------------------------------------------------------------
@on_one_redis()
async def test_redis_outage_served_by_postgres_breaker_opens_and_recovers(
    entities: Entities,
    settings: Settings,
    private_redis: list[PrivateRedis],
    tmp_path: Path,
) -> None:
    e = entities
    server = PrivateRedis(tmp_path)
    private_redis.append(server)
    await server.start()
    budget_s, fail_max, reset_s = 0.4, 3, 1.0
    cfg = reader_settings(
        settings,
        redis_url=server.url,
        read_timeout_ms=int(budget_s * 1000),
        breaker_fail_max=fail_max,
        breaker_reset_s=reset_s,
    )
    async with CacheReader.from_settings(cfg) as r:
        # An empty Redis fills itself through reads; then it serves them.
        seeded = await read_all(r, e)
        assert [x.source for x in seeded] == ["postgres"] * 4
        assert_values(seeded, e)
        assert [x.source for x in await read_all(r, e)] == ["redis"] * 4

        # Hung server (SIGSTOP): each read pays the budget, then PostgreSQL answers.
        server.signal(signal.SIGSTOP)
        for _ in range(fail_max):
            start = time.perf_counter()
            got = await r.get_session(e.sid)
            took = time.perf_counter() - start
            assert got == ReadResult(seeded[0].value, "postgres")
            assert took >= budget_s * 0.9  # Redis was tried: the budget was paid
        assert r.breaker_state is BreakerState.OPEN

        # Really down (SIGKILL): every family from PostgreSQL, without paying the budget.
        server.kill()
        errors = r.stats.redis_errors
        durations: list[float] = []
        for _ in range(3):
            for read in (
                lambda: r.get_session(e.sid),
                lambda: r.get_user_state(e.user),
                lambda: r.get_ai_response(e.prompt),
                lambda: r.get_voice(e.speaker, e.text),
            ):
                start = time.perf_counter()
                result = await read()
                durations.append(time.perf_counter() - start)
                assert result.source == "postgres"
        assert max(durations) < budget_s / 2, durations
        assert r.stats.redis_errors == errors  # Redis was not even tried
        assert_values(await read_all(r, e), e)
        assert r.breaker_state is BreakerState.OPEN

        # After reset_s one probe tries the dead server: it fails, the breaker reopens.
        await asyncio.sleep(reset_s)
        assert (await r.get_session(e.sid)).source == "postgres"
        assert (r.breaker_state, r.stats.breaker_opens) == (BreakerState.OPEN, 2)
        reopened = time.monotonic()

        # Back on the same port, empty: the next probe closes the breaker and the
        # cache is rebuilt by the reads themselves.
        await server.start()
        await asyncio.sleep(max(0.0, reset_s - (time.monotonic() - reopened)))
        probe = await r.get_session(e.sid)
        assert probe == ReadResult(seeded[0].value, "postgres")
        assert r.breaker_state is BreakerState.CLOSED
        client = server.client()
        try:
            assert await client.exists(session_key(e.sid)) == 1
            ttl = await client.pttl(session_key(e.sid))
            assert 0 < ttl <= 30 * 60 * 1000
        finally:
            await client.aclose()
        assert [x.source for x in await read_all(r, e)] == [
            "redis",
            "postgres",
            "postgres",
            "postgres",
        ]
        final = await read_all(r, e)
        assert [x.source for x in final] == ["redis"] * 4
        assert_values(final, e)
        s = r.stats
        assert (s.breaker_opens, s.breaker_state, s.write_back_errors) == (2, "closed", 0)
        assert s.fallbacks == fail_max + 16 + 1


# --- replica -------------------------------------------------------------------------------------
@on_one_redis()
async def test_reads_hit_the_replica_and_write_backs_land_on_the_primary(
    entities: Entities,
    settings: Settings,
    private_redis: list[PrivateRedis],
    tmp_path: Path,
) -> None:
    e = entities
    primary = PrivateRedis(tmp_path)
    private_redis.append(primary)
    await primary.start()
    replica = PrivateRedis(tmp_path, "--replicaof", "127.0.0.1", str(primary.port))
    private_redis.append(replica)
    await replica.start()
    await eventually(
        lambda: info(replica, "replication"),
        lambda i: i.get("master_link_status") == "up",
        timeout_s=15,
    )
    cfg = reader_settings(
        settings, redis_url=primary.url, redis_replica_url=replica.url, read_timeout_ms=1000
    )
    p0, r0 = await info(primary, "stats"), await info(replica, "stats")
    async with CacheReader.from_settings(cfg) as r:
        assert (await r.get_session(e.sid)).source == "postgres"
        assert (await r.get_ai_response(e.prompt)).source == "postgres"
        assert (r.stats.write_backs, r.stats.write_back_errors) == (2, 0)

        master = primary.client()
        try:  # WAIT: the write-backs reached the replica (no keyspace lookups involved)
            assert await master.execute_command("WAIT", 1, 5000) == 1
        finally:
            await master.aclose()

        session = await r.get_session(e.sid)
        ai = await r.get_ai_response(e.prompt)
        assert (session.source, ai.source) == ("redis", "redis")
        assert ai.value == e.ai_value
    p1, r1 = await info(primary, "stats"), await info(replica, "stats")
    # Every read went to the replica: two misses then two hits; none to the primary.
    assert (
        r1["keyspace_misses"] - r0["keyspace_misses"],
        r1["keyspace_hits"] - r0["keyspace_hits"],
    ) == (2, 2)
    assert (
        p1["keyspace_misses"] - p0["keyspace_misses"],
        p1["keyspace_hits"] - p0["keyspace_hits"],
    ) == (0, 0)
    # The write-backs were executed by the primary (a replica refuses writes anyway).
    commands = await info(primary, "commandstats")
    assert commands["cmdstat_hset"]["calls"] == 1
    assert commands["cmdstat_set"]["calls"] == 1
    client = primary.client()
    try:
        assert await client.exists(session_key(e.sid), ai_response_key(e.prompt)) == 2
    finally:
        await client.aclose()
