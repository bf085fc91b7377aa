"""What replay, the rebuild and warm-up read besides the caches (`caches.py`).

Bulk reads stream every row of a key kind through a cursor, so they must run
inside a transaction (`streams.read.recompute.kind_chunks` opens a read-only
one). Each takes `since` (None: every row) and `now`, whether its statement
needs `now` or not, so recompute drives every kind the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime

import orjson

from streams.model import PopularScenario, SessionState, UserState
from streams.store.postgres import (
    SESSION_COLUMNS,
    USER_COLUMNS,
    Connection,
    session_from_row,
    user_from_row,
)

PROJECTED_TABLES = ("events", "sessions", "users", "daily_counters", "ai_responses", "voice_clips")
"""The tables any Redis key is computed from (recompute's sources)."""


async def nothing_to_project(conn: Connection) -> bool:
    """True when no table a Redis key comes from has a row (a fresh database): Redis
    cannot have lost anything of rpcache's yet. One statement; each EXISTS stops at
    the first row a scan finds."""
    probes = " OR ".join(f"EXISTS (SELECT 1 FROM {table})" for table in PROJECTED_TABLES)
    return not await conn.fetchval(f"SELECT {probes}")


async def open_sessions(
    conn: Connection, since: datetime | None, now: datetime
) -> AsyncIterator[SessionState]:
    """Open sessions active at or after `since`, the most recently active first."""
    cursor = conn.cursor(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE status IN ('active', 'paused')"
        " AND ($1::timestamptz IS NULL OR last_activity >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY last_activity DESC",
        since,
        now,
    )
    async for row in cursor:
        yield session_from_row(row)


async def users_seen(
    conn: Connection, since: datetime | None, now: datetime
) -> AsyncIterator[UserState]:
    """Users seen at or after `since`, the most recently seen first."""
    cursor = conn.cursor(
        f"SELECT {USER_COLUMNS} FROM users"
        " WHERE ($1::timestamptz IS NULL OR last_seen >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY last_seen DESC",
        since,
        now,
    )
    async for row in cursor:
        yield user_from_row(row)


@dataclass(frozen=True, slots=True)
class StoredLatency:
    """The latency of one stored ai.response or voice.synthesized event."""

    type: str
    occurred_at: datetime
    event_id: str
    latency_ms: float


async def latencies(
    conn: Connection, since: datetime | None, now: datetime
) -> AsyncIterator[StoredLatency]:
    """Latencies of the last hour before `now` (the longest metrics window), oldest first."""
    cursor = conn.cursor(
        "SELECT type, occurred_at, event_id::text, (payload->>'latency_ms')::float8 AS latency_ms"
        " FROM events WHERE type IN ('ai.response', 'voice.synthesized')"
        " AND occurred_at > $2::timestamptz - interval '1 hour'"
        " AND ($1::timestamptz IS NULL OR occurred_at >= $1) ORDER BY occurred_at",
        since,
        now,
    )
    async for row in cursor:
        yield StoredLatency(row[0], row[1], row[2], float(row[3]))


@dataclass(frozen=True, slots=True)
class StatsWrite:
    """When a day's stats hash was last written (its TTL runs 24 h from then)."""

    day: date
    written_at: datetime


async def stats_writes(
    conn: Connection, since: datetime | None, now: datetime
) -> AsyncIterator[StatsWrite]:
    """Days whose stats hash was written at or after `since`, the latest day first."""
    cursor = conn.cursor(
        "SELECT day, written_at FROM daily_stats_writes"
        " WHERE ($1::timestamptz IS NULL OR written_at >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY day DESC",
        since,
        now,
    )
    async for row in cursor:
        yield StatsWrite(row[0], row[1])


async def popular_scenarios(conn: Connection, top: int) -> list[PopularScenario]:
    """The `top` scenarios by sessions, each with its latest non-null context."""
    rows = await conn.fetch(
        """
        SELECT scenario_id, count(*) AS sessions,
               (array_agg(conversation_context::text ORDER BY started_at DESC)
                    FILTER (WHERE conversation_context IS NOT NULL))[1] AS context
        FROM sessions WHERE scenario_id IS NOT NULL
        GROUP BY scenario_id ORDER BY sessions DESC, scenario_id LIMIT $1
        """,
        top,
    )
    return [
        PopularScenario(r["scenario_id"], r["sessions"], orjson.loads(r["context"] or "{}"))
        for r in rows
    ]
