"""What a Redis key should hold, recomputed from PostgreSQL.

One function per key family, each returning the `RedisOp` the worker would
write now (a `Delete` once the key's TTL has run out), built with the same
projection functions as the worker. The read library uses them for its
PostgreSQL fallback and read-through; replay and warm-up use the bulk forms.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from schemas.keys import (
    SESSION_TTL,
    ai_response_key_for_hash,
    session_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.projections import (
    Delete,
    RedisOp,
    project_ai_response,
    project_latencies,
    project_session,
    project_stats,
    project_user,
    project_voice,
    stats_fields,
)
from streams.reducers.caches import LatencyPoint, latency_member
from streams.reducers.sessions import business_day
from streams.settings import Settings
from streams.store import postgres as pg
from streams.store.postgres import Connection


async def session_op(conn: Connection, session_id: str, now: datetime) -> RedisOp:
    sessions = await pg.load_sessions(conn, [session_id])
    session = sessions.get(session_id)
    if session is None:
        return Delete(session_key(session_id))
    return project_session(session, now)


async def user_op(conn: Connection, settings: Settings, user_id: str, now: datetime) -> RedisOp:
    users = await pg.load_users(conn, [user_id])
    user = users.get(user_id)
    if user is None:
        return Delete(user_state_key(user_id))
    day = business_day(user.last_seen, settings.tz)
    started = await pg.user_day_started(conn, [(user_id, day)])
    return project_user(user, started.get((user_id, day), 0), settings.daily_session_quota, now)


async def ai_response_op(conn: Connection, prompt_hash: str, now: datetime) -> RedisOp:
    rows = await pg.ai_entries(conn, [prompt_hash])
    if not rows:
        return Delete(ai_response_key_for_hash(prompt_hash))
    r = rows[0]
    return project_ai_response(
        r["prompt_hash"], r["response"], r["provider"], r["model"], r["cached_at"], now
    )


async def voice_op(conn: Connection, speaker_id: int, text_hash: str, now: datetime) -> RedisOp:
    row = await conn.fetchrow(
        "SELECT audio, cached_at FROM voice_clips"
        " WHERE speaker_id = $1 AND text_hash = $2 AND cached_at IS NOT NULL",
        speaker_id,
        text_hash,
    )
    if row is None or row["audio"] is None:
        return Delete(voice_key_for_hash(speaker_id, text_hash))
    audio_b64 = base64.b64encode(row["audio"]).decode()
    return project_voice(speaker_id, text_hash, audio_b64, row["cached_at"], now)


# --- bulk: every key of a family, for replay and the automatic rebuild -------------
FAMILIES: tuple[str, ...] = ("stats", "sessions", "users", "ai", "voice", "metrics")
"""Replay order: small, live-traffic keys first; caches by use count after."""

CHUNK = 500


@dataclass
class Chunk:
    """Up to CHUNK keys of one family, and how many rows were past their TTL."""

    family: str
    ops: list[RedisOp]
    expired: int


async def family_chunks(
    pool: asyncpg.Pool, settings: Settings, family: str, since: datetime | None, now: datetime
) -> AsyncIterator[Chunk]:
    """Every key of `family` PostgreSQL can recompute, most used first for caches."""
    query, build = _BULK[family]
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = conn.cursor(query, since, now)
        rows: list[asyncpg.Record] = []
        async for row in cursor:
            rows.append(row)
            if len(rows) == CHUNK:
                yield await build(conn, settings, family, rows, now)
                rows = []
        if rows:
            yield await build(conn, settings, family, rows, now)


def _split(family: str, ops: list[RedisOp]) -> Chunk:
    live: list[RedisOp] = [op for op in ops if not isinstance(op, Delete)]
    return Chunk(family, live, len(ops) - len(live))


async def _sessions(
    conn: Connection, settings: Settings, family: str, rows: list[asyncpg.Record], now: datetime
) -> Chunk:
    return _split(family, [project_session(pg.session_from_row(r), now) for r in rows])


async def _users(
    conn: Connection, settings: Settings, family: str, rows: list[asyncpg.Record], now: datetime
) -> Chunk:
    users = [pg.user_from_row(r) for r in rows]
    days = {(u.user_id, business_day(u.last_seen, settings.tz)) for u in users}
    started = await pg.user_day_started(conn, days)
    quota = settings.daily_session_quota
    ops = [
        project_user(
            u, started.get((u.user_id, business_day(u.last_seen, settings.tz)), 0), quota, now
        )
        for u in users
    ]
    return _split(family, ops)


async def _ai(
    conn: Connection, settings: Settings, family: str, rows: list[asyncpg.Record], now: datetime
) -> Chunk:
    ops = [
        project_ai_response(
            r["prompt_hash"], r["response"], r["provider"], r["model"], r["cached_at"], now
        )
        for r in rows
    ]
    return _split(family, ops)


async def _voice(
    conn: Connection, settings: Settings, family: str, rows: list[asyncpg.Record], now: datetime
) -> Chunk:
    ops = [
        project_voice(
            r["speaker_id"], r["text_hash"], base64.b64encode(r["audio"]).decode(),
            r["cached_at"], now,
        )
        for r in rows
    ]  # fmt: skip
    return _split(family, ops)


async def _metrics(
    conn: Connection, settings: Settings, family: str, rows: list[asyncpg.Record], now: datetime
) -> Chunk:
    points = [
        LatencyPoint(
            "response_time" if r["type"] == "ai.response" else "synthesis_time",
            r["occurred_at"],
            latency_member(float(r["latency_ms"]), r["event_id"]),
        )
        for r in rows
    ]
    return Chunk(family, project_latencies(points, now), 0)


async def _stats(
    conn: Connection, settings: Settings, family: str, rows: list[asyncpg.Record], now: datetime
) -> Chunk:
    today = business_day(now, settings.tz)
    counters = await pg.day_counters(conn, [r["day"] for r in rows])
    active = await pg.count_open_sessions(conn, now, SESSION_TTL.total_seconds())
    ops = [
        project_stats(
            r["day"],
            stats_fields(
                counters[r["day"]], active if r["day"] == today else None,
                settings.max_concurrent_sessions,
            ),
            r["written_at"],
            now,
        )
        for r in rows
    ]  # fmt: skip
    return _split(family, ops)


_Build = Callable[[Connection, Settings, str, list[asyncpg.Record], datetime], Awaitable[Chunk]]
# Each query takes $1 = since (or NULL) and $2 = now.
_BULK: dict[str, tuple[str, _Build]] = {
    "sessions": (
        f"SELECT {pg.SESSION_COLUMNS} FROM sessions WHERE status IN ('active', 'paused')"
        " AND ($1::timestamptz IS NULL OR last_activity >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY last_activity DESC",
        _sessions,
    ),
    "users": (
        f"SELECT {pg.USER_COLUMNS} FROM users"
        " WHERE ($1::timestamptz IS NULL OR last_seen >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY last_seen DESC",
        _users,
    ),
    "ai": (
        "SELECT prompt_hash, response, provider, model, cached_at FROM ai_responses"
        " WHERE cached_at IS NOT NULL AND ($1::timestamptz IS NULL OR cached_at >= $1)"
        " AND $2::timestamptz IS NOT NULL ORDER BY use_count DESC, prompt_hash",
        _ai,
    ),
    "voice": (
        "SELECT speaker_id, text_hash, audio, cached_at FROM voice_clips"
        " WHERE cached_at IS NOT NULL AND audio IS NOT NULL"
        " AND ($1::timestamptz IS NULL OR cached_at >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY use_count DESC, speaker_id, text_hash",
        _voice,
    ),
    "metrics": (
        "SELECT type, occurred_at, event_id::text, (payload->>'latency_ms')::float8 AS latency_ms"
        " FROM events WHERE type IN ('ai.response', 'voice.synthesized')"
        " AND occurred_at > $2::timestamptz - interval '1 hour'"
        " AND ($1::timestamptz IS NULL OR occurred_at >= $1) ORDER BY occurred_at",
        _metrics,
    ),
    "stats": (
        "SELECT day, written_at FROM daily_stats_writes"
        " WHERE ($1::timestamptz IS NULL OR written_at >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY day DESC",
        _stats,
    ),
}
