"""The session slice end to end: publisher → Kafka → worker → PostgreSQL + Redis."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from schemas.keys import SESSION_TTL, format_utc, session_key, stats_key, user_state_key
from streams.publisher import EventPublisher
from streams.settings import Settings
from streams.store import postgres as pg
from tests.integration.conftest import WorkerProcess, eventually, stored_count
from tests.integration.topology import RedisKeys

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel", "cluster", "cluster-design")
"""`make test` runs this module on one Redis, `make test-sentinel` on the Sentinel topology,
`make test-cluster` on the local Redis Cluster in both key layouts."""


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def today(settings: Settings) -> date:
    return datetime.now(settings.tz).date()


async def counters(pool: asyncpg.Pool, day: date) -> int:
    value = await pool.fetchval(
        "SELECT value FROM daily_counters WHERE day = $1 AND name = 'sessions_started'", day
    )
    return int(value or 0)


async def open_sessions(pool: asyncpg.Pool) -> int:
    """active_sessions as the worker defines it, asked of PostgreSQL the same way."""
    async with pool.acquire() as conn:
        return await pg.count_open_sessions(conn, datetime.now(UTC), SESSION_TTL.total_seconds())


async def test_session_lifecycle(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    u = user()
    t0 = datetime.now(UTC).replace(microsecond=0)
    await publisher.user_login(u, preferences={"lang": "ja"}, occurred_at=t0)
    sid = await publisher.session_started(
        u,
        speaker_id=6,
        conversation_context={"scene": "cafe"},
        scenario_id="cafe-1",
        occurred_at=t0 + timedelta(seconds=1),
    )
    await publisher.session_updated(
        u, sid, status="paused", speaker_id=3, occurred_at=t0 + timedelta(seconds=2)
    )
    await publisher.session_activity(
        u, sid, performance_stats={"wpm": 120}, occurred_at=t0 + timedelta(seconds=3)
    )

    want_session = {
        "user_id": u,
        "status": "paused",
        "speaker_id": "3",
        "conversation_context": '{"scene":"cafe"}',
        "last_activity": format_utc(t0 + timedelta(seconds=3)),
        "performance_stats": '{"wpm":120}',
    }
    got = await eventually(
        lambda: redis_keys.hgetall(session_key(sid)), lambda v: v == want_session
    )
    assert got == want_session
    assert await redis_keys.type(session_key(sid)) == "hash"
    ttl = await redis_keys.pttl(session_key(sid))
    expected_ttl = (t0 + timedelta(seconds=3, minutes=30) - datetime.now(UTC)).total_seconds()
    assert abs(ttl / 1000 - expected_ttl) < 5, (ttl, expected_ttl)

    state = await redis_keys.hgetall(user_state_key(u))
    assert state == {
        "current_session_id": sid,
        "last_login": format_utc(t0),
        "preferences": '{"lang":"ja"}',
        "daily_session_count": "1",
        "remaining_sessions": str(settings.daily_session_quota - 1),
    }
    # 1 h after the user's latest event (the activity at t0 + 3 s)
    user_ttl = await redis_keys.pttl(user_state_key(u))
    expected_user_ttl = (t0 + timedelta(seconds=3, hours=1) - datetime.now(UTC)).total_seconds()
    assert abs(user_ttl / 1000 - expected_user_ttl) < 5, (user_ttl, expected_user_ttl)

    row = await pool.fetchrow(
        "SELECT status, speaker_id, scenario_id FROM sessions WHERE session_id = $1", uuid.UUID(sid)
    )
    assert dict(row) == {"status": "paused", "speaker_id": 3, "scenario_id": "cafe-1"}

    await publisher.session_ended(u, sid, reason="bye", occurred_at=t0 + timedelta(seconds=4))
    await eventually(lambda: redis_keys.exists(session_key(sid)), lambda n: n == 0)
    state = await eventually(
        lambda: redis_keys.hgetall(user_state_key(u)), lambda s: s.get("current_session_id") == ""
    )
    assert state["daily_session_count"] == "1"
    row = await pool.fetchrow(
        "SELECT status, end_reason, ended_at FROM sessions WHERE session_id = $1", uuid.UUID(sid)
    )
    assert (row["status"], row["end_reason"]) == ("ended", "bye")
    assert row["ended_at"] == t0 + timedelta(seconds=4)


async def test_daily_quota_and_stats(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    day = today(settings)
    before = await counters(pool, day)
    u = user()
    ids = [await publisher.session_started(u, speaker_id=i) for i in range(3)]
    await eventually(
        lambda: redis_keys.hgetall(user_state_key(u)), lambda s: s.get("daily_session_count") == "3"
    )
    state = await redis_keys.hgetall(user_state_key(u))
    assert state["remaining_sessions"] == str(settings.daily_session_quota - 3)
    assert state["current_session_id"] == ids[-1]
    assert await counters(pool, day) == before + 3

    async def stats() -> dict[str, str]:
        return await redis_keys.hgetall(stats_key(day))

    open_in_pg = await open_sessions(pool)
    got = await eventually(stats, lambda s: s.get("total_sessions_today") == str(before + 3))
    assert int(got["active_sessions"]) == open_in_pg
    assert 86000 < await redis_keys.ttl(stats_key(day)) <= 86400


async def test_quota_never_goes_below_zero(
    worker: WorkerProcess, settings: Settings, redis_keys: RedisKeys, publisher: EventPublisher
) -> None:
    u = user()
    for i in range(settings.daily_session_quota + 2):
        await publisher.session_started(u, speaker_id=i % 5)
    state = await eventually(
        lambda: redis_keys.hgetall(user_state_key(u)),
        lambda s: s.get("daily_session_count") == str(settings.daily_session_quota + 2),
    )
    assert state["remaining_sessions"] == "0"


async def test_idle_session_expires(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    u = user()
    almost_idle = datetime.now(UTC) - timedelta(minutes=30) + timedelta(seconds=4)
    sid = await publisher.session_started(u, speaker_id=1, occurred_at=almost_idle)
    await eventually(lambda: redis_keys.exists(session_key(sid)), lambda n: n == 1)
    # The leader rewrites the stats hash on a timer: wait until it counts this session.
    open_now = await open_sessions(pool)
    shown = await eventually(
        lambda: redis_keys.hgetall(stats_key(today(settings))),
        lambda s: int(s.get("active_sessions", -1)) == open_now,
    )
    active_before = int(shown["active_sessions"])

    row = await eventually(
        lambda: pool.fetchrow(
            "SELECT status, ended_at FROM sessions WHERE session_id = $1", uuid.UUID(sid)
        ),
        lambda r: r is not None and r["status"] == "expired",
        timeout_s=20,
    )
    assert row["ended_at"] == almost_idle.replace(microsecond=almost_idle.microsecond) + timedelta(
        minutes=30
    )
    assert await redis_keys.exists(session_key(sid)) == 0
    await eventually(
        lambda: redis_keys.hgetall(user_state_key(u)), lambda s: s.get("current_session_id") == ""
    )
    stats = await eventually(
        lambda: redis_keys.hgetall(stats_key(today(settings))),
        lambda s: int(s["active_sessions"]) < active_before,
    )
    open_in_pg = await open_sessions(pool)
    assert int(stats["active_sessions"]) <= open_in_pg + 1


async def test_duplicates_change_nothing(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    day = today(settings)
    before = await counters(pool, day)
    u = user()
    sid = str(uuid.uuid4())
    eid = str(uuid.uuid4())
    at = datetime.now(UTC)
    for _ in range(3):
        await publisher.session_started(
            u, speaker_id=2, session_id=sid, event_id=eid, occurred_at=at
        )
    marker = await publisher.session_activity(u, sid)  # lands after the duplicates
    await eventually(lambda: stored_count(pool, [marker]), lambda n: n == 1)
    assert await stored_count(pool, [eid]) == 1
    assert await counters(pool, day) == before + 1
    state = await eventually(
        lambda: redis_keys.hgetall(user_state_key(u)), lambda s: s.get("daily_session_count") == "1"
    )
    assert state["current_session_id"] == sid
    conflicts = await pool.fetchval("SELECT count(*) FROM dead_letters WHERE event_id = $1", eid)
    assert conflicts == 0  # a faithful redelivery is not a conflict


async def test_duplicate_event_id_with_other_content_is_a_conflict(
    worker: WorkerProcess, publisher: EventPublisher, pool: asyncpg.Pool
) -> None:
    u = user()
    eid = str(uuid.uuid4())
    await publisher.user_login(u, preferences={"v": 1}, event_id=eid)
    await publisher.user_login(u, preferences={"v": 2}, event_id=eid)
    row = await eventually(
        lambda: pool.fetchrow("SELECT reason, detail FROM dead_letters WHERE event_id = $1", eid),
        lambda r: r is not None,
    )
    assert row["reason"] == "duplicate_event_conflict"
    stored = await pool.fetchval("SELECT payload FROM events WHERE event_id = $1", uuid.UUID(eid))
    assert orjson.loads(stored)["preferences"] == {"v": 1}  # the first one wins


async def test_a_retry_written_out_differently_is_not_a_conflict(
    worker: WorkerProcess, publisher: EventPublisher, pool: asyncpg.Pool
) -> None:
    """The same event re-serialised by a producer's retry (nested keys in another order,
    1 as 1.0) is a redelivery, asked of PostgreSQL's jsonb; a changed value stays a
    conflict."""
    u, eid, sid = user(), str(uuid.uuid4()), str(uuid.uuid4())
    at = datetime.now(UTC)
    contexts: list[dict[str, Any]] = [
        {"a": 1, "b": {"x": 1.5, "y": [1, 2]}},  # the first one
        {"b": {"y": [1, 2], "x": 1.5}, "a": 1},  # keys in another order
        {"a": 1.0, "b": {"x": 1.5, "y": [1.0, 2]}},  # 1 written as 1.0
        {"a": 2, "b": {"x": 1.5, "y": [1, 2]}},  # a changed value
    ]
    for context in contexts:
        await publisher.session_started(
            u,
            speaker_id=1,
            session_id=sid,
            event_id=eid,
            occurred_at=at,
            conversation_context=context,
        )
    marker = await publisher.session_activity(u, sid)  # lands after all four
    await eventually(lambda: stored_count(pool, [marker]), lambda n: n == 1)
    rows = await eventually(
        lambda: pool.fetch("SELECT reason, detail FROM dead_letters WHERE event_id = $1", eid),
        lambda rs: len(rs) > 0,
        timeout_s=10,
    )
    assert [r["reason"] for r in rows] == ["duplicate_event_conflict"]  # the changed one only


def _bad_inputs(settings: Settings) -> list[tuple[str, bytes]]:
    sid = str(uuid.uuid4())

    def ev(**kw: Any) -> bytes:
        base = {
            "event_id": str(uuid.uuid4()),
            "occurred_at": "2025-01-30T10:30:00Z",
            "user_id": "bad-user",
            "session_id": sid,
            "type": "session.started",
            "speaker_id": 1,
        }
        base.update(kw)
        return orjson.dumps({k: v for k, v in base.items() if v is not None})

    return [
        ("invalid_json", b"{definitely not json"),
        ("not_an_object", b"[1,2,3]"),
        ("unknown_type", ev(type="session.teleported")),
        ("invalid_fields", ev(speaker_id="six")),
        ("invalid_fields", ev(event_id=None)),
        ("invalid_fields", ev(user_id="evil:user:{x}")),
        ("invalid_fields", ev(occurred_at="2025-01-30T10:30:00")),
        ("wrong_topic", ev(type="ai.failed", provider="p", model="m", error="e", latency_ms=1)),
        ("too_large", ev(conversation_context={"pad": "x" * (settings.max_event_bytes + 10)})),
        ("nul_character", ev(conversation_context={"k": "\x00"})),
        ("unknown_session", ev(type="session.activity", session_id=str(uuid.uuid4()))),
    ]


async def test_bad_input_is_dead_lettered_and_the_next_event_lands(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    from aiokafka import AIOKafkaConsumer

    topic = f"{settings.topic_prefix}session-events"
    dl_topic = f"{settings.topic_prefix}dead-letters"
    key = f"bad-{uuid.uuid4().hex[:8]}".encode()
    cases = _bad_inputs(settings)
    for _, raw in cases:
        await publisher.publish_raw(topic, key, raw)
    u = user()
    sid = await publisher.session_started(u, speaker_id=4)  # the next good event
    await eventually(lambda: redis_keys.exists(session_key(sid)), lambda n: n == 1)

    rows = await eventually(
        lambda: pool.fetch(
            "SELECT reason, detail, original FROM dead_letters"
            " WHERE message_key = $1 ORDER BY kafka_offset",
            key,
        ),
        lambda r: len(r) == len(cases),
    )
    assert [r["reason"] for r in rows] == [c[0] for c in cases]
    assert [bytes(r["original"]) for r in rows] == [c[1] for c in cases]
    assert all(r["detail"] for r in rows)
    # Nowhere, under any key (a design layout has no stored form for such an id).
    assert [k async for k in redis_keys.scan("*evil*")] == []

    consumer = AIOKafkaConsumer(
        dl_topic,
        bootstrap_servers=settings.kafka_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        seen: list[dict[str, Any]] = []

        async def read() -> int:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                seen.extend(orjson.loads(m.value) for m in msgs if m.key == key)
            return len(seen)

        await eventually(read, lambda n: n >= len(cases))
    finally:
        await consumer.stop()
    first = seen[0]
    assert first["reason"] == "invalid_json"
    assert first["source_topic"] == topic
    assert {"partition", "offset", "original", "detail"} <= first.keys()


async def test_faust_cli_runs_the_same_worker(
    test_env: dict[str, str], database: None, redis_keys: RedisKeys, pool: asyncpg.Pool
) -> None:
    """`faust -A streams.app worker` is the same app as `rpcache worker`."""
    from pathlib import Path

    from streams.worker.topics import ensure_topics

    env = {**test_env, "TOPIC_PREFIX": f"{test_env['TOPIC_PREFIX']}cli.", "APP_ID": "cli-test"}
    cli_settings = Settings(**{k.lower(): v for k, v in env.items()})
    await ensure_topics(cli_settings)
    faust_bin = str(Path(sys.executable).with_name("faust"))
    w = WorkerProcess(
        env, "faust-cli", (faust_bin, "-A", "streams.app", "worker", "-l", "info", "--without-web")
    )
    w.start()
    try:
        await w.wait_ready()
        async with EventPublisher.from_settings(cli_settings) as pub:
            sid = await pub.session_started(user(), speaker_id=9)
        got = await eventually(lambda: redis_keys.hgetall(session_key(sid)), bool)
        assert got["speaker_id"] == "9"
    finally:
        assert w.stop() == 0


async def test_a_key_of_another_type_does_not_stop_the_idle_sweep_or_the_worker(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
) -> None:
    """Someone rewrote a user's state key as a string: the sweep's Redis write gets
    WRONGTYPE. It is logged (the key is left for `rpcache replay`), PostgreSQL still
    records the expiry, and the worker goes on (a timer that raised crashed it)."""
    u = user()
    almost_idle = datetime.now(UTC) - timedelta(minutes=30) + timedelta(seconds=3)
    sid = await publisher.session_started(u, speaker_id=1, occurred_at=almost_idle)
    await eventually(lambda: redis_keys.exists(user_state_key(u)), lambda n: n == 1)
    await redis_keys.delete(user_state_key(u))
    state = user_state_key(u)
    await redis_keys.on(state).set(redis_keys.stored(state), "not a hash")
    try:
        await eventually(
            lambda: pool.fetchval(
                "SELECT status FROM sessions WHERE session_id = $1", uuid.UUID(sid)
            ),
            lambda status: status == "expired",
            timeout_s=20,
        )
        await eventually(
            lambda: _log_has(worker, "timer sweep_idle_sessions failed"), lambda found: found
        )
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_text()[-3000:]
        # and it still takes events
        other = user()
        await publisher.user_login(other)
        await eventually(lambda: redis_keys.exists(user_state_key(other)), lambda n: n == 1)
    finally:
        await redis_keys.delete(user_state_key(u))


async def _log_has(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log_text()


async def test_the_stats_writer_rewrites_its_hash_when_it_holds_another_type(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    settings: Settings,
) -> None:
    """stats:realtime:{day} is the leader's alone: rewritten as a list by someone else,
    it comes back as the hash at the next change instead of a warning every tick."""
    key = stats_key(today(settings))
    await eventually(lambda: redis_keys.type(key), lambda t: t == "hash")
    await redis_keys.delete(key)
    await redis_keys.on(key).rpush(redis_keys.stored(key), "not ours")
    await publisher.session_started(user(), speaker_id=1)  # the figures change
    stats = await eventually(lambda: redis_keys.type(key), lambda t: t == "hash", timeout_s=20)
    assert stats == "hash"
    assert int((await redis_keys.hgetall(key))["active_sessions"]) >= 1
    assert "held another type; deleted and written again" in worker.log_text()


async def test_the_stats_writer_rewrites_a_hash_someone_else_wrote_since(
    worker: WorkerProcess,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    """A stale figure written over the leader's (a replay or the automatic rebuild that
    read PostgreSQL before the last change and wrote after it) is put right at the
    writer's next tick, not after STATS_REFRESH_S (60 s), though no figure changed."""
    key = stats_key(today(settings))
    shown = await eventually(
        lambda: redis_keys.hgetall(key),
        lambda s: s.get("active_sessions") is not None,
    )
    open_now = int(shown["active_sessions"])
    await redis_keys.on(key).hset(redis_keys.stored(key), "active_sessions", str(open_now + 900))
    stats = await eventually(
        lambda: redis_keys.hgetall(key),
        lambda s: int(s["active_sessions"]) < open_now + 900,
        timeout_s=10,
    )
    assert int(stats["active_sessions"]) == await open_sessions(pool)
    await redis_keys.delete(key)  # gone (a FLUSHALL, a DEL): back at the next tick too
    await eventually(lambda: redis_keys.exists(key), lambda n: n == 1, timeout_s=10)
