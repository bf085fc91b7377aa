"""An in-memory `Store` with the contract of the PostgreSQL one (`streams.store.base`).

For the pipeline's unit tests: dicts instead of tables, the ON CONFLICT rules
of every statement in Python, and units of work that commit all or nothing.
A unit works on a copy of the tables and swaps it in when its block ends
without an exception; units run one at a time (a lock), which is what the
row locks of PostgreSQL amount to for the write path (no unit ever sees
another's uncommitted rows; the outbox's SKIP LOCKED never has to skip).

The committed tables are `MemoryStore.tables`, for tests to look at.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import orjson

from streams.model import (
    OPEN_STATUSES,
    AiEntry,
    CachedAiResponse,
    CachedVoiceClip,
    DayCounters,
    SessionState,
    UserState,
    VoiceEntry,
    voice_clip,
)
from streams.store.base import (
    DeadLetterRow,
    Store,
    StoredDeadLetter,
    StoredEvent,
    Tx,
    VoiceSource,
    payload_sha,
)

_State = TypeVar("_State", SessionState, UserState)


@dataclass(frozen=True, slots=True)
class AiRow:
    """An `ai_responses` row."""

    prompt_hash: str
    prompt: str
    response: str | None
    provider: str | None
    model: str | None
    cached_at: datetime | None
    source_event_id: str | None
    use_count: int
    hit_count: int
    last_used_at: datetime


@dataclass(frozen=True, slots=True)
class VoiceRow:
    """A `voice_clips` row."""

    speaker_id: int
    text_hash: str
    text: str
    audio: bytes | None
    audio_format: str | None
    cached_at: datetime | None
    source_event_id: str | None
    use_count: int
    hit_count: int
    last_used_at: datetime


@dataclass
class Tables:
    """The committed state; every value is immutable or a private copy, so a unit
    of work copies each dict (not its values) and swaps the copies in on commit."""

    events: dict[str, StoredEvent] = field(default_factory=dict)
    dead_letters: dict[tuple[str, int, int, str], StoredDeadLetter] = field(default_factory=dict)
    """By (topic, partition, offset, reason); ids ascend in insertion order."""
    published_at: dict[int, datetime] = field(default_factory=dict)
    """Dead letter id → when it was marked published."""
    last_offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    """(group, topic, partition) → the last offset handled."""
    sessions: dict[str, SessionState] = field(default_factory=dict)
    users: dict[str, UserState] = field(default_factory=dict)
    user_day_started: dict[tuple[str, date], int] = field(default_factory=dict)
    day_counters: dict[tuple[date, str], int] = field(default_factory=dict)
    counters_updated_at: dict[tuple[date, str], datetime] = field(default_factory=dict)
    stats_written_at: dict[date, datetime] = field(default_factory=dict)
    ai: dict[str, AiRow] = field(default_factory=dict)
    voice: dict[tuple[int, str], VoiceRow] = field(default_factory=dict)
    next_dead_letter_id: int = 1

    def copy(self) -> Tables:
        """The tables of a unit of work: new dicts of the same (immutable) rows."""
        copied = Tables(next_dead_letter_id=self.next_dead_letter_id)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(copied, f.name, dict(value))
        return copied


class MemoryStore:
    """The write path's store in dicts; `clock` is the `now` of each unit of work."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.tables = Tables()
        self.clock = clock
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTx]:
        async with self._lock:
            tx = MemoryTx(self.tables.copy(), self.clock())
            try:
                yield tx
            finally:
                tx.open = False
            self.tables = tx.tables  # reached only when the block did not raise


def _own(state: _State) -> _State:
    """A copy no caller can change the stored state through (JSON fields included)."""
    return copy.deepcopy(state)


class MemoryTx:
    """`streams.store.base.Tx` on a unit of work's copy of the tables."""

    def __init__(self, tables: Tables, now: datetime) -> None:
        self.tables = tables
        self.now = now
        self.open = True

    def _t(self) -> Tables:
        if not self.open:
            raise RuntimeError("the unit of work has ended")
        return self.tables

    # events
    async def insert_events(self, stored: Sequence[StoredEvent]) -> set[str]:
        events = self._t().events
        new: set[str] = set()
        for s in stored:
            if s.event.event_id not in events:
                events[s.event.event_id] = s
                new.add(s.event.event_id)
        return new

    async def stored_payload_shas(self, event_ids: Iterable[str]) -> dict[str, bytes]:
        events = self._t().events
        return {i: payload_sha(events[i].payload) for i in set(event_ids) if i in events}

    async def same_stored_payloads(self, payloads: Sequence[tuple[str, bytes]]) -> set[int]:
        events = self._t().events
        return {
            n
            for n, (i, p) in enumerate(payloads)
            if i in events and _same_json(orjson.loads(events[i].payload), orjson.loads(p))
        }

    # dead letters and their outbox
    async def insert_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        t = self._t()
        for r in rows:
            key = (r.topic, r.partition, r.offset, r.reason)
            if key in t.dead_letters:
                continue
            t.dead_letters[key] = StoredDeadLetter(
                t.next_dead_letter_id,
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.reason,
                r.detail,
                r.event_id,
                r.original,
                self.now,
            )
            t.next_dead_letter_id += 1

    async def claim_unpublished_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        t = self._t()
        unpublished = [d for d in t.dead_letters.values() if d.id not in t.published_at]
        return sorted(unpublished, key=lambda d: d.id)[:limit]

    async def mark_dead_letters_published(self, ids: Sequence[int]) -> None:
        t = self._t()
        known = {d.id for d in t.dead_letters.values()}
        for i in ids:
            if i in known:
                t.published_at[i] = self.now

    # the last offset handled per partition
    async def record_positions(self, group: str, positions: dict[tuple[str, int], int]) -> None:
        last = self._t().last_offsets
        for (topic, partition), offset in positions.items():
            key = (group, topic, partition)
            last[key] = max(last.get(key, offset), offset)

    # sessions and users
    async def lock_sessions(self, session_ids: Iterable[str]) -> dict[str, SessionState]:
        return await self.load_sessions(session_ids)

    async def load_sessions(self, session_ids: Iterable[str]) -> dict[str, SessionState]:
        sessions = self._t().sessions
        return {i: _own(sessions[i]) for i in sorted(set(session_ids)) if i in sessions}

    async def lock_idle_sessions(self, idle_since: datetime, limit: int) -> dict[str, SessionState]:
        sessions = self._t().sessions
        idle = sorted(
            i
            for i, s in sessions.items()
            if s.status in OPEN_STATUSES and s.last_activity <= idle_since
        )
        return {i: _own(sessions[i]) for i in idle[:limit]}

    async def lock_users(self, user_ids: Iterable[str]) -> dict[str, UserState]:
        users = self._t().users
        return {i: _own(users[i]) for i in sorted(set(user_ids)) if i in users}

    async def save_sessions(self, sessions: Iterable[SessionState]) -> None:
        stored = self._t().sessions
        for s in sessions:
            old = stored.get(s.session_id)
            if old is None:
                stored[s.session_id] = replace(_own(s), version=1)
            else:  # what the upsert updates; user, scenario, start and day stay
                stored[s.session_id] = replace(
                    old,
                    status=s.status,
                    speaker_id=s.speaker_id,
                    conversation_context=copy.deepcopy(s.conversation_context),
                    performance_stats=copy.deepcopy(s.performance_stats),
                    last_activity=s.last_activity,
                    ended_at=s.ended_at,
                    end_reason=s.end_reason,
                    version=old.version + 1,
                )

    async def save_users(self, users: Iterable[UserState]) -> None:
        stored = self._t().users
        for u in users:
            old = stored.get(u.user_id)
            stored[u.user_id] = replace(_own(u), version=1 if old is None else old.version + 1)

    async def add_user_day_started(self, counts: Counter[tuple[str, date]]) -> None:
        started = self._t().user_day_started
        for key, n in counts.items():
            started[key] = started.get(key, 0) + n

    async def user_day_started(
        self, keys: Iterable[tuple[str, date]]
    ) -> dict[tuple[str, date], int]:
        started = self._t().user_day_started
        return {k: started[k] for k in set(keys) if k in started}

    # daily counters and the stats writer
    async def add_day_counters(self, counts: Counter[tuple[date, str]]) -> None:
        t = self._t()
        for key, n in counts.items():
            t.day_counters[key] = t.day_counters.get(key, 0) + n
            t.counters_updated_at[key] = self.now

    async def day_counters(self, days: Iterable[date]) -> dict[date, DayCounters]:
        values: dict[date, dict[str, int]] = {d: {} for d in sorted(set(days))}
        for (day, name), value in self._t().day_counters.items():
            if day in values:
                values[day][name] = value
        return {day: DayCounters.of(named) for day, named in values.items()}

    async def days_changed_since(self, since: datetime) -> set[date]:
        return {day for (day, _), at in self._t().counters_updated_at.items() if at > since}

    async def count_open_sessions(self, now: datetime, idle_after_s: float) -> int:
        after = now - timedelta(seconds=idle_after_s)
        return sum(
            1
            for s in self._t().sessions.values()
            if s.status in OPEN_STATUSES and s.last_activity > after
        )

    async def touch_stats_days(self, days: Iterable[date]) -> dict[date, datetime]:
        written = self._t().stats_written_at
        for day in set(days):
            written[day] = self.now
        return {day: self.now for day in set(days)}

    # AI responses and voice clips
    async def upsert_ai_entries(self, entries: Sequence[AiEntry]) -> None:
        rows = self._t().ai
        for e in entries:  # 1. every use: insert, or add the counts
            old = rows.get(e.prompt_hash)
            if old is None:
                rows[e.prompt_hash] = AiRow(
                    e.prompt_hash,
                    e.prompt,
                    e.response,
                    e.provider,
                    e.model,
                    e.cached_at,
                    e.source_event_id,
                    e.uses,
                    e.hits,
                    e.last_used_at,
                )
            else:
                rows[e.prompt_hash] = _counted(old, e)
        for e in entries:  # 2. every miss: its content, unless a later miss's is there
            row = rows[e.prompt_hash]
            if e.cached_at is not None and (row.cached_at is None or row.cached_at <= e.cached_at):
                rows[e.prompt_hash] = replace(
                    row,
                    response=e.response,
                    provider=e.provider,
                    model=e.model,
                    cached_at=e.cached_at,
                    source_event_id=e.source_event_id,
                )

    async def upsert_voice_entries(self, entries: Sequence[VoiceEntry]) -> None:
        rows = self._t().voice
        for e in entries:
            key = (e.speaker_id, e.text_hash)
            old = rows.get(key)
            if old is None:
                rows[key] = VoiceRow(
                    e.speaker_id,
                    e.text_hash,
                    e.text,
                    e.audio,
                    e.audio_format,
                    e.cached_at,
                    e.source_event_id,
                    e.uses,
                    e.hits,
                    e.last_used_at,
                )
            else:
                rows[key] = _counted(old, e)
        for e in entries:
            key = (e.speaker_id, e.text_hash)
            row = rows[key]
            if e.cached_at is not None and (row.cached_at is None or row.cached_at <= e.cached_at):
                rows[key] = replace(
                    row,
                    audio=e.audio,
                    audio_format=e.audio_format,
                    cached_at=e.cached_at,
                    source_event_id=e.source_event_id,
                )

    async def ai_responses(self, prompt_hashes: Iterable[str]) -> list[CachedAiResponse]:
        rows = self._t().ai
        held = [rows[h] for h in sorted(set(prompt_hashes)) if h in rows]
        # Held: a miss stored the response with its cached_at (the content is the miss's).
        return [
            CachedAiResponse(r.prompt_hash, r.response, r.provider, r.model, r.cached_at)  # type: ignore[arg-type]
            for r in held
            if r.cached_at is not None
        ]

    async def voice_sources(self, keys: Iterable[tuple[int, str]]) -> list[VoiceSource]:
        rows = self._t().voice
        return [
            VoiceSource(r.speaker_id, r.text_hash, r.cached_at, r.source_event_id)
            for k in sorted(set(keys))
            if (r := rows.get(k)) is not None and r.cached_at is not None and r.audio is not None
        ]

    async def voice_clip_of(self, speaker_id: int, text_hash: str) -> CachedVoiceClip | None:
        row = self._t().voice.get((speaker_id, text_hash))
        return None if row is None else voice_clip(speaker_id, text_hash, row.audio, row.cached_at)


_Row = TypeVar("_Row", AiRow, VoiceRow)


def _counted(row: _Row, entry: AiEntry | VoiceEntry) -> _Row:
    """ON CONFLICT of the use statement: add the counts, keep the latest use."""
    return replace(
        row,
        use_count=row.use_count + entry.uses,
        hit_count=row.hit_count + entry.hits,
        last_used_at=max(row.last_used_at, entry.last_used_at),
    )


def _implements(store: MemoryStore, tx: MemoryTx) -> tuple[Store, Tx]:
    """mypy checks here that both keep the contract (never called)."""
    return store, tx


def _same_json(a: object, b: object) -> bool:
    """jsonb's equality: object keys in any order, 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b
