"""What a Redis key should hold, recomputed from PostgreSQL.

One function per key kind turns rows into values (`_session_ops`, `_user_ops`,
`_ai_ops`, `_voice_ops`, `_latency_ops`, `_stats_ops`), each built on the
projection the worker uses, from the row types the store returns to the
worker too; single keys (the read library's PostgreSQL fallback and
read-through) and the bulk forms (replay, the automatic rebuild) both go
through them. A key's op is what the worker would write now: a `Delete` once
its TTL has run out, or when PostgreSQL holds nothing for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg

from schemas.keys import (
    SESSION_TTL,
    ai_response_key_for_hash,
    business_day,
    session_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.model import CachedAiResponse, CachedVoiceClip, SessionState, UserState
from streams.projections import (
    Delete,
    RedisOp,
    figures_of_days,
    project_ai_response,
    project_latencies,
    project_session,
    project_stats,
    project_user,
    project_voice,
    stats_fields,
    user_day,
)
from streams.reducers.caches import LatencyPoint, latency_member
from streams.settings import Settings
from streams.store import caches, reads
from streams.store import postgres as pg
from streams.store.postgres import Connection
from streams.store.reads import StatsWrite, StoredLatency


# --- one function per key kind: rows → the values to write -------------------------
async def _session_ops(
    conn: Connection, settings: Settings, sessions: list[SessionState], now: datetime
) -> list[RedisOp]:
    return [project_session(s, now) for s in sessions]


async def _user_ops(
    conn: Connection, settings: Settings, users: list[UserState], now: datetime
) -> list[RedisOp]:
    started = await pg.user_day_started(conn, {user_day(u, settings.tz) for u in users})
    quota = settings.daily_session_quota
    return [project_user(u, started.get(user_day(u, settings.tz), 0), quota, now) for u in users]


async def _ai_ops(
    conn: Connection, settings: Settings, rows: list[CachedAiResponse], now: datetime
) -> list[RedisOp]:
    return [project_ai_response(r, now) for r in rows]


async def _voice_ops(
    conn: Connection, settings: Settings, clips: list[CachedVoiceClip], now: datetime
) -> list[RedisOp]:
    return [project_voice(c, now) for c in clips]


async def _latency_ops(
    conn: Connection, settings: Settings, rows: list[StoredLatency], now: datetime
) -> list[RedisOp]:
    points = [
        LatencyPoint(
            "response_time" if r.type == "ai.response" else "synthesis_time",
            r.occurred_at,
            latency_member(r.latency_ms, r.event_id),
        )
        for r in rows
    ]
    return project_latencies(points, now)


async def _stats_ops(
    conn: Connection, settings: Settings, rows: list[StatsWrite], now: datetime
) -> list[RedisOp]:
    """Each day's hash as the stats writer computes it, expiring 24 h after its last write."""
    counters = await pg.day_counters(conn, [r.day for r in rows])
    active = await pg.count_open_sessions(conn, now, SESSION_TTL.total_seconds())
    figures = figures_of_days(
        counters, business_day(now, settings.tz), active, settings.max_concurrent_sessions
    )
    return [project_stats(r.day, stats_fields(figures[r.day]), r.written_at, now) for r in rows]


# --- single keys: the read library ---------------------------------------------------
async def session_op(conn: Connection, session_id: str, now: datetime) -> RedisOp:
    session = (await pg.load_sessions(conn, [session_id])).get(session_id)
    if session is None:
        return Delete(session_key(session_id))
    return project_session(session, now)


async def user_op(conn: Connection, settings: Settings, user_id: str, now: datetime) -> RedisOp:
    user = (await pg.load_users(conn, [user_id])).get(user_id)
    if user is None:
        return Delete(user_state_key(user_id))
    (op,) = await _user_ops(conn, settings, [user], now)
    return op


async def ai_response_op(conn: Connection, prompt_hash: str, now: datetime) -> RedisOp:
    rows = await caches.ai_responses(conn, [prompt_hash])
    if not rows:
        return Delete(ai_response_key_for_hash(prompt_hash))
    return project_ai_response(rows[0], now)


async def voice_op(conn: Connection, speaker_id: int, text_hash: str, now: datetime) -> RedisOp:
    clip = await caches.voice_clip_of(conn, speaker_id, text_hash)
    if clip is None:
        return Delete(voice_key_for_hash(speaker_id, text_hash))
    return project_voice(clip, now)


# --- bulk: every key of a kind, for replay and the automatic rebuild ---------------
KEY_KINDS: tuple[str, ...] = ("stats", "sessions", "users", "ai", "voice", "metrics")
"""The kinds of keys replay recomputes, in replay order: small, live-traffic keys
first; caches by use count after. Each belongs to one key family of SPEC §8
(`streams.redis_targets.REPLAY_KINDS`)."""

CHUNK = 500


@dataclass
class Chunk:
    """Up to CHUNK keys of one kind, and how many rows were past their TTL."""

    kind: str
    ops: list[RedisOp]
    expired: int


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _Bulk(Generic[R]):
    """A key kind's rows (a store cursor: since, now) and its row → value function."""

    rows: Callable[[Connection, datetime | None, datetime], AsyncIterator[R]]
    ops: Callable[[Connection, Settings, list[R], datetime], Awaitable[list[RedisOp]]]


_BULK: dict[str, _Bulk[Any]] = {
    "sessions": _Bulk(reads.open_sessions, _session_ops),
    "users": _Bulk(reads.users_seen, _user_ops),
    "ai": _Bulk(caches.all_ai_responses, _ai_ops),
    "voice": _Bulk(caches.all_voice_clips, _voice_ops),
    "metrics": _Bulk(reads.latencies, _latency_ops),
    "stats": _Bulk(reads.stats_writes, _stats_ops),
}


KeyFilter = Callable[[str], bool]
"""Which SPEC §4 keys to keep (True: keep); e.g. the automatic rebuild of one master
of a cluster keeps the keys stored in that master's slots (streams/read/rebuild.py)."""


async def kind_chunks(
    pool: asyncpg.Pool,
    settings: Settings,
    kind: str,
    since: datetime | None,
    now: datetime,
    keep: KeyFilter | None = None,
) -> AsyncIterator[Chunk]:
    """Every key of `kind` PostgreSQL can recompute, most used first for caches.

    With `keep`, only the keys it accepts (SPEC §4 keys) are in the chunks and
    in their expired counts; the order is unchanged, so a filtered rebuild is
    still popular first. A chunk is built from up to CHUNK rows, so a filtered
    one may hold fewer ops (or none).
    """
    bulk = _BULK[kind]
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        rows: list[Any] = []
        async for row in bulk.rows(conn, since, now):
            rows.append(row)
            if len(rows) == CHUNK:
                yield _split(kind, await bulk.ops(conn, settings, rows, now), keep)
                rows = []
        if rows:
            yield _split(kind, await bulk.ops(conn, settings, rows, now), keep)


def _split(kind: str, ops: list[RedisOp], keep: KeyFilter | None = None) -> Chunk:
    """The ops to write, and how many keys are expired (not recreated); only the keys
    `keep` accepts, when given."""
    if keep is not None:
        ops = [op for op in ops if keep(op.key)]
    live: list[RedisOp] = [op for op in ops if not isinstance(op, Delete)]
    return Chunk(kind, live, len(ops) - len(live))
