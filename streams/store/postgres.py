"""The write path's PostgreSQL statements: batched, run inside one transaction.

Each function is one round trip (arrays through `unnest`, or a pipelined
`executemany`) and knows nothing about event semantics: the pipeline decides
what to write, this module only writes and reads rows, and hands back the
types of `streams.model` (or the row types of `base.py`), never asyncpg
records. The write path calls these through `postgres_store.PostgresTx`, one
method per function (`base.Tx`, the contract the in-memory store keeps too). The
other statements of the project live beside it: `caches.py` (every read of
the cache tables), `reads.py` (replay and warm-up), `alerts.py`,
`heartbeats.py`, `progress.py` (what the tools poll), `admin.py`, `migrate.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from streams.model import AiEntry, DayCounters, SessionState, UserState, VoiceEntry
from streams.store.base import DeadLetterRow, StoredDeadLetter, StoredEvent, payload_sha

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A plain connection or one borrowed from a pool."""


# --- events -------------------------------------------------------------------
async def insert_events(conn: Connection, stored: Sequence[StoredEvent]) -> set[str]:
    """Insert events once; return the event_ids that were new.

    `ON CONFLICT DO NOTHING` makes redelivery harmless: a duplicate returns no
    row, so nothing downstream counts it again.
    """
    if not stored:
        return set()
    payloads = [s.payload for s in stored]
    rows = await conn.fetch(
        """
        INSERT INTO events (event_id, type, user_id, session_id, occurred_at, payload,
                            payload_sha, topic, kafka_partition, kafka_offset)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[],
                             $5::timestamptz[], $6::text[]::jsonb[], $7::bytea[],
                             $8::text[], $9::int[], $10::bigint[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id::text
        """,
        [s.event.event_id for s in stored],
        [s.event.type for s in stored],
        [s.event.user_id for s in stored],
        [getattr(s.event, "session_id", None) for s in stored],
        [s.event.occurred_at for s in stored],
        [p.decode() for p in payloads],
        [payload_sha(p) for p in payloads],
        [s.topic for s in stored],
        [s.partition for s in stored],
        [s.offset for s in stored],
    )
    return {r[0] for r in rows}


async def stored_payload_shas(conn: Connection, event_ids: Iterable[str]) -> dict[str, bytes]:
    """payload_sha of events already stored, to tell a redelivery from a conflict."""
    rows = await conn.fetch(
        "SELECT event_id::text, payload_sha FROM events WHERE event_id = ANY($1::uuid[])",
        list(event_ids),
    )
    return {r[0]: r[1] for r in rows}


async def same_stored_payloads(conn: Connection, payloads: Sequence[tuple[str, bytes]]) -> set[int]:
    """Positions in `payloads` whose stored payload equals the given JSON as jsonb:
    object keys in any order and 1 / 1.0 / 1.00 alike, as a producer's re-serialising
    retry may write them. Asked only for the rare redelivery whose bytes differ
    (`stored_payload_shas`)."""
    if not payloads:
        return set()
    rows = await conn.fetch(
        """
        SELECT g.n - 1
        FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS g(event_id, payload, n)
        JOIN events e ON e.event_id = g.event_id
        WHERE e.payload = g.payload::jsonb
        """,
        [i for i, _ in payloads],
        [p.decode() for _, p in payloads],
    )
    return {int(r[0]) for r in rows}


# --- dead letters ---------------------------------------------------------------
async def insert_dead_letters(conn: Connection, rows: Sequence[DeadLetterRow]) -> None:
    if not rows:
        return
    await conn.executemany(
        """
        INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, message_key,
                                  reason, detail, event_id, original)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (topic, kafka_partition, kafka_offset, reason) DO NOTHING
        """,
        [
            (r.topic, r.partition, r.offset, r.key, r.reason, r.detail, r.event_id, r.original)
            for r in rows
        ],
    )


async def claim_unpublished_dead_letters(conn: Connection, limit: int) -> list[StoredDeadLetter]:
    """Lock up to `limit` unpublished dead letters, oldest first, for this transaction.

    `SKIP LOCKED`: rows another flush holds (a task of this process or another
    worker process) are passed over, so no two flushes publish the same row;
    a row it has marked and committed no longer matches `published_at IS NULL`.
    Must run inside a transaction, which keeps the claim until it ends (a row
    lock, so it also holds behind a transaction-mode pooler such as pgbouncer).
    """
    rows = await conn.fetch(
        """
        SELECT id, topic, kafka_partition, kafka_offset, message_key, reason, detail,
               event_id, original, created_at
        FROM dead_letters WHERE published_at IS NULL ORDER BY id LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [StoredDeadLetter(*r) for r in rows]


async def mark_dead_letters_published(conn: Connection, ids: Sequence[int]) -> None:
    await conn.execute(
        "UPDATE dead_letters SET published_at = now() WHERE id = ANY($1::bigint[])", list(ids)
    )


# --- consumed positions -----------------------------------------------------------
async def record_positions(
    conn: Connection, group: str, positions: dict[tuple[str, int], int]
) -> None:
    """Store the highest offset handled per partition (never moves backwards)."""
    if not positions:
        return
    await conn.executemany(
        """
        INSERT INTO consumer_positions (consumer_group, topic, kafka_partition, last_offset)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE
        SET last_offset = GREATEST(consumer_positions.last_offset, EXCLUDED.last_offset),
            updated_at = now()
        """,
        [(group, topic, part, off) for (topic, part), off in positions.items()],
    )


async def last_offsets(conn: Connection | asyncpg.Pool, group: str) -> dict[tuple[str, int], int]:
    """The last offset whose effects are stored, per (topic, partition) of `group`.

    Kafka's position of a partition is this + 1 (the next offset to read).
    """
    rows = await conn.fetch(
        "SELECT topic, kafka_partition, last_offset FROM consumer_positions"
        " WHERE consumer_group = $1",
        group,
    )
    return {(r["topic"], r["kafka_partition"]): r["last_offset"] for r in rows}


# --- sessions and users -----------------------------------------------------------
SESSION_COLUMNS = """session_id::text, user_id, status, speaker_id, scenario_id,
    conversation_context::text, performance_stats::text, started_at, business_day,
    last_activity, ended_at, end_reason, version"""


def session_from_row(row: asyncpg.Record) -> SessionState:
    return SessionState(
        session_id=row[0],
        user_id=row[1],
        status=row[2],
        speaker_id=row[3],
        scenario_id=row[4],
        conversation_context=_obj(row[5]),
        performance_stats=_obj(row[6]),
        started_at=row[7],
        business_day=row[8],
        last_activity=row[9],
        ended_at=row[10],
        end_reason=row[11],
        version=row[12],
    )


def user_from_row(row: asyncpg.Record) -> UserState:
    return UserState(
        user_id=row[0],
        current_session_id=row[1],
        last_login=row[2],
        preferences=_obj(row[3]),
        last_seen=row[4],
        version=row[5],
    )


def _obj(text: str | None) -> dict[str, Any] | None:
    return orjson.loads(text) if text is not None else None


def _text(value: dict[str, Any] | None) -> str | None:
    return orjson.dumps(value).decode() if value is not None else None


async def lock_sessions(conn: Connection, session_ids: Iterable[str]) -> dict[str, SessionState]:
    """Load sessions for update, in id order so two workers cannot deadlock."""
    rows = await conn.fetch(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ANY($1::uuid[])"
        " ORDER BY session_id FOR UPDATE",
        sorted(set(session_ids)),
    )
    return {r[0]: session_from_row(r) for r in rows}


async def load_sessions(conn: Connection, session_ids: Iterable[str]) -> dict[str, SessionState]:
    """Read sessions without locking (readers, replay)."""
    rows = await conn.fetch(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ANY($1::uuid[])",
        list(set(session_ids)),
    )
    return {r[0]: session_from_row(r) for r in rows}


async def lock_idle_sessions(
    conn: Connection, idle_since: datetime, limit: int
) -> dict[str, SessionState]:
    """Open sessions whose last activity is older than `idle_since`."""
    rows = await conn.fetch(
        f"SELECT {SESSION_COLUMNS} FROM sessions"
        " WHERE status IN ('active', 'paused') AND last_activity <= $1"
        " ORDER BY session_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        idle_since,
        limit,
    )
    return {r[0]: session_from_row(r) for r in rows}


USER_COLUMNS = (
    "user_id, current_session_id::text, last_login, preferences::text, last_seen, version"
)


async def lock_users(conn: Connection, user_ids: Iterable[str]) -> dict[str, UserState]:
    rows = await conn.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ANY($1::text[])"
        " ORDER BY user_id FOR UPDATE",
        sorted(set(user_ids)),
    )
    return {r[0]: user_from_row(r) for r in rows}


async def load_users(conn: Connection, user_ids: Iterable[str]) -> dict[str, UserState]:
    """Read users without locking (readers, replay)."""
    rows = await conn.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ANY($1::text[])", list(set(user_ids))
    )
    return {r[0]: user_from_row(r) for r in rows}


async def save_sessions(conn: Connection, sessions: Iterable[SessionState]) -> None:
    await conn.executemany(
        """
        INSERT INTO sessions (session_id, user_id, status, speaker_id, scenario_id,
            conversation_context, performance_stats, started_at, business_day,
            last_activity, ended_at, end_reason, version)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12, 1)
        ON CONFLICT (session_id) DO UPDATE SET
            status = EXCLUDED.status, speaker_id = EXCLUDED.speaker_id,
            conversation_context = EXCLUDED.conversation_context,
            performance_stats = EXCLUDED.performance_stats,
            last_activity = EXCLUDED.last_activity, ended_at = EXCLUDED.ended_at,
            end_reason = EXCLUDED.end_reason, version = sessions.version + 1
        """,
        [
            (
                s.session_id,
                s.user_id,
                s.status,
                s.speaker_id,
                s.scenario_id,
                _text(s.conversation_context),
                _text(s.performance_stats),
                s.started_at,
                s.business_day,
                s.last_activity,
                s.ended_at,
                s.end_reason,
            )
            for s in sessions
        ],
    )


async def save_users(conn: Connection, users: Iterable[UserState]) -> None:
    await conn.executemany(
        """
        INSERT INTO users (user_id, current_session_id, last_login, preferences, last_seen,
                           version)
        VALUES ($1, $2, $3, $4::jsonb, $5, 1)
        ON CONFLICT (user_id) DO UPDATE SET
            current_session_id = EXCLUDED.current_session_id,
            last_login = EXCLUDED.last_login, preferences = EXCLUDED.preferences,
            last_seen = EXCLUDED.last_seen, version = users.version + 1
        """,
        [
            (u.user_id, u.current_session_id, u.last_login, _text(u.preferences), u.last_seen)
            for u in users
        ],
    )


async def add_user_day_started(conn: Connection, counts: Counter[tuple[str, date]]) -> None:
    if not counts:
        return
    await conn.executemany(
        """
        INSERT INTO user_daily_sessions (user_id, day, started) VALUES ($1, $2, $3)
        ON CONFLICT (user_id, day) DO UPDATE
        SET started = user_daily_sessions.started + EXCLUDED.started
        """,
        [(user, day, n) for (user, day), n in counts.items()],
    )


async def user_day_started(
    conn: Connection, keys: Iterable[tuple[str, date]]
) -> dict[tuple[str, date], int]:
    pairs = list(set(keys))
    if not pairs:
        return {}
    rows = await conn.fetch(
        """
        SELECT u.user_id, u.day, d.started
        FROM unnest($1::text[], $2::date[]) AS u(user_id, day)
        JOIN user_daily_sessions d USING (user_id, day)
        """,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r[0], r[1]): r[2] for r in rows}


# --- daily counters and stats -------------------------------------------------------
async def add_day_counters(conn: Connection, counts: Counter[tuple[date, str]]) -> None:
    if not counts:
        return
    await conn.executemany(
        """
        INSERT INTO daily_counters (day, name, value) VALUES ($1, $2, $3::numeric)
        ON CONFLICT (day, name) DO UPDATE
        SET value = daily_counters.value + EXCLUDED.value, updated_at = now()
        """,
        [(day, name, n) for (day, name), n in counts.items()],
    )


async def day_counters(conn: Connection, days: Iterable[date]) -> dict[date, DayCounters]:
    """Every counter of `days` (a day without any has all at 0): the one read of a day's
    counters, behind every figure (`streams.projections.day_figures`). Values are whole
    numbers (`numeric` in the table, so no sum can overflow: migration 005)."""
    wanted = sorted(set(days))
    values: dict[date, dict[str, int]] = {d: {} for d in wanted}
    rows = await conn.fetch(
        "SELECT day, name, value FROM daily_counters WHERE day = ANY($1::date[])", wanted
    )
    for day, name, value in rows:
        values[day][name] = int(value)
    return {day: DayCounters.of(named) for day, named in values.items()}


async def days_changed_since(conn: Connection, since: datetime) -> set[date]:
    """Days with a counter that moved in a transaction started after `since`."""
    rows = await conn.fetch("SELECT DISTINCT day FROM daily_counters WHERE updated_at > $1", since)
    return {r[0] for r in rows}


async def count_open_sessions(conn: Connection, now: datetime, idle_after_s: float) -> int:
    """Sessions neither ended nor idle for longer than the session TTL."""
    value = await conn.fetchval(
        "SELECT count(*) FROM sessions WHERE status IN ('active', 'paused')"
        " AND last_activity > $1::timestamptz - make_interval(secs => $2)",
        now,
        idle_after_s,
    )
    return int(value)


async def touch_stats_days(conn: Connection, days: Iterable[date]) -> dict[date, datetime]:
    """Record that the stats of `days` are (re)written now; return that time."""
    rows = await conn.fetch(
        """
        INSERT INTO daily_stats_writes (day, written_at)
        SELECT d, now() FROM unnest($1::date[]) AS d
        ON CONFLICT (day) DO UPDATE SET written_at = EXCLUDED.written_at
        RETURNING day, written_at
        """,
        sorted(set(days)),
    )
    return {r[0]: r[1] for r in rows}


# --- AI responses and voice clips ---------------------------------------------------
async def upsert_ai_entries(conn: Connection, entries: Sequence[AiEntry]) -> None:
    """Count uses; keep the content of the latest miss (by occurred_at)."""
    await _upsert_cache(
        conn,
        "ai_responses",
        ("prompt_hash",),
        ("prompt",),
        ("response", "provider", "model"),
        [((e.prompt_hash,), (e.prompt,), (e.response, e.provider, e.model), e) for e in entries],
    )


async def upsert_voice_entries(conn: Connection, entries: Sequence[VoiceEntry]) -> None:
    """Count uses; keep the audio of the latest miss (by occurred_at)."""
    await _upsert_cache(
        conn,
        "voice_clips",
        ("speaker_id", "text_hash"),
        ("text",),
        ("audio", "audio_format"),
        [((e.speaker_id, e.text_hash), (e.text,), (e.audio, e.audio_format), e) for e in entries],
    )


async def _upsert_cache(
    conn: Connection,
    table: str,
    key: tuple[str, ...],
    fixed: tuple[str, ...],
    content: tuple[str, ...],
    rows: Sequence[tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...], AiEntry | VoiceEntry]],
) -> None:
    """One batched statement for a cache table (identifiers are ours, never input):
    insert the entry, or add to its use/hit counts and, for a miss no older than
    the content held (`cached_at`; a tie goes to the later write), replace the
    content.

    One statement, so a miss's content (a voice clip's audio: up to 700 KB) is
    sent and written once. Written as an INSERT then an UPDATE of the misses,
    every new clip went over the wire twice and PostgreSQL wrote (and TOASTed)
    its row twice. Every SET expression reads the row as it was before the
    update (PostgreSQL docs, "INSERT … ON CONFLICT DO UPDATE"), so `newer`
    compares with the old `cached_at` in each.
    """
    if not rows:
        return
    cols = (
        *key,
        *fixed,
        *content,
        "cached_at",
        "source_event_id",
        "use_count",
        "hit_count",
        "last_used_at",
    )
    marks = ", ".join(f"${n}" for n in range(1, len(cols) + 1))
    newer = (
        f"EXCLUDED.cached_at IS NOT NULL"
        f" AND ({table}.cached_at IS NULL OR {table}.cached_at <= EXCLUDED.cached_at)"
    )
    replaced = ", ".join(
        f"{col} = CASE WHEN {newer} THEN EXCLUDED.{col} ELSE {table}.{col} END"
        for col in (*content, "cached_at", "source_event_id")
    )
    await conn.executemany(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET"
        f" use_count = {table}.use_count + EXCLUDED.use_count,"
        f" hit_count = {table}.hit_count + EXCLUDED.hit_count,"
        f" last_used_at = GREATEST({table}.last_used_at, EXCLUDED.last_used_at),"
        f" {replaced}",
        [
            (*k, *f, *c, e.cached_at, e.source_event_id, e.uses, e.hits, e.last_used_at)
            for k, f, c, e in rows
        ],
    )
