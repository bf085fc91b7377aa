"""The write path's `Store` on PostgreSQL: a pool transaction and the existing statements.

`PostgresStore.transaction()` is what the write path always did, `async with
pool.acquire() as conn, conn.transaction()`, and each `PostgresTx` method hands
back the coroutine of the `postgres.py` / `caches.py` function of the same name
on that connection: the same SQL, the same round trips, and no extra coroutine
frame per operation (the methods are plain functions, not `async def`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from streams.model import (
    AiEntry,
    CachedAiResponse,
    CachedVoiceClip,
    DayCounters,
    SessionState,
    UserState,
    VoiceEntry,
)
from streams.store import caches
from streams.store import postgres as pg
from streams.store.base import DeadLetterRow, StoredDeadLetter, StoredEvent, Tx, VoiceSource
from streams.store.postgres import Connection


class PostgresStore:
    """The worker's store: units of work on a pool's connections."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield PostgresTx(conn)


def as_tx(target: Tx | Connection) -> Tx:
    """A `Tx` as it is; a connection already inside a transaction, as the `Tx` on it
    (for callers that open the transaction themselves, as the runtime's sweep does)."""
    if isinstance(target, asyncpg.Connection | PoolConnectionProxy):
        return PostgresTx(target)
    return target


class PostgresTx:
    """The operations of `streams.store.base.Tx` on one connection in a transaction."""

    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # events
    def insert_events(self, stored: Sequence[StoredEvent]) -> Coroutine[Any, Any, set[str]]:
        return pg.insert_events(self.conn, stored)

    def stored_payload_shas(
        self, event_ids: Iterable[str]
    ) -> Coroutine[Any, Any, dict[str, bytes]]:
        return pg.stored_payload_shas(self.conn, event_ids)

    def same_stored_payloads(
        self, payloads: Sequence[tuple[str, bytes]]
    ) -> Coroutine[Any, Any, set[int]]:
        return pg.same_stored_payloads(self.conn, payloads)

    # dead letters and their outbox
    def insert_dead_letters(self, rows: Sequence[DeadLetterRow]) -> Coroutine[Any, Any, None]:
        return pg.insert_dead_letters(self.conn, rows)

    def claim_unpublished_dead_letters(
        self, limit: int
    ) -> Coroutine[Any, Any, list[StoredDeadLetter]]:
        return pg.claim_unpublished_dead_letters(self.conn, limit)

    def mark_dead_letters_published(self, ids: Sequence[int]) -> Coroutine[Any, Any, None]:
        return pg.mark_dead_letters_published(self.conn, ids)

    # the last offset handled per partition
    def record_positions(
        self, group: str, positions: dict[tuple[str, int], int]
    ) -> Coroutine[Any, Any, None]:
        return pg.record_positions(self.conn, group, positions)

    # sessions and users
    def lock_sessions(
        self, session_ids: Iterable[str]
    ) -> Coroutine[Any, Any, dict[str, SessionState]]:
        return pg.lock_sessions(self.conn, session_ids)

    def load_sessions(
        self, session_ids: Iterable[str]
    ) -> Coroutine[Any, Any, dict[str, SessionState]]:
        return pg.load_sessions(self.conn, session_ids)

    def lock_idle_sessions(
        self, idle_since: datetime, limit: int
    ) -> Coroutine[Any, Any, dict[str, SessionState]]:
        return pg.lock_idle_sessions(self.conn, idle_since, limit)

    def lock_users(self, user_ids: Iterable[str]) -> Coroutine[Any, Any, dict[str, UserState]]:
        return pg.lock_users(self.conn, user_ids)

    def save_sessions(self, sessions: Iterable[SessionState]) -> Coroutine[Any, Any, None]:
        return pg.save_sessions(self.conn, sessions)

    def save_users(self, users: Iterable[UserState]) -> Coroutine[Any, Any, None]:
        return pg.save_users(self.conn, users)

    def add_user_day_started(self, counts: Counter[tuple[str, date]]) -> Coroutine[Any, Any, None]:
        return pg.add_user_day_started(self.conn, counts)

    def user_day_started(
        self, keys: Iterable[tuple[str, date]]
    ) -> Coroutine[Any, Any, dict[tuple[str, date], int]]:
        return pg.user_day_started(self.conn, keys)

    # daily counters and the stats writer
    def add_day_counters(self, counts: Counter[tuple[date, str]]) -> Coroutine[Any, Any, None]:
        return pg.add_day_counters(self.conn, counts)

    def day_counters(self, days: Iterable[date]) -> Coroutine[Any, Any, dict[date, DayCounters]]:
        return pg.day_counters(self.conn, days)

    def days_changed_since(self, since: datetime) -> Coroutine[Any, Any, set[date]]:
        return pg.days_changed_since(self.conn, since)

    def count_open_sessions(self, now: datetime, idle_after_s: float) -> Coroutine[Any, Any, int]:
        return pg.count_open_sessions(self.conn, now, idle_after_s)

    def touch_stats_days(self, days: Iterable[date]) -> Coroutine[Any, Any, dict[date, datetime]]:
        return pg.touch_stats_days(self.conn, days)

    # AI responses and voice clips
    def upsert_ai_entries(self, entries: Sequence[AiEntry]) -> Coroutine[Any, Any, None]:
        return pg.upsert_ai_entries(self.conn, entries)

    def upsert_voice_entries(self, entries: Sequence[VoiceEntry]) -> Coroutine[Any, Any, None]:
        return pg.upsert_voice_entries(self.conn, entries)

    def ai_responses(
        self, prompt_hashes: Iterable[str]
    ) -> Coroutine[Any, Any, list[CachedAiResponse]]:
        return caches.ai_responses(self.conn, prompt_hashes)

    def voice_sources(
        self, keys: Iterable[tuple[int, str]]
    ) -> Coroutine[Any, Any, list[VoiceSource]]:
        return caches.voice_sources(self.conn, keys)

    def voice_clip_of(
        self, speaker_id: int, text_hash: str
    ) -> Coroutine[Any, Any, CachedVoiceClip | None]:
        return caches.voice_clip_of(self.conn, speaker_id, text_hash)
