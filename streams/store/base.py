"""The write path's store: a unit of work (one transaction) and what runs inside it.

`Store.transaction()` opens one unit of work; the `Tx` it yields has exactly
the operations the write path uses (the pipeline, the family handlers, the
idle sweep, the stats writer, the dead-letter outbox), named as the
PostgreSQL functions behind them. All of a unit's writes commit together when
the block ends, or none does when it raises.

Two implementations keep one contract (`tests/contract/test_store_contract.py`
runs the same test class on both):

- `streams.store.postgres_store.PostgresStore`: the worker's; each operation is
  the function of `postgres.py` / `caches.py` of the same name, one round trip,
  on the connection of the transaction.
- `streams.store.memory.MemoryStore`: dicts, for the pipeline's unit tests.

The semantics every implementation keeps (the SQL's ON CONFLICT clauses):

- events are unique by event_id: `insert_events` stores the first and returns
  the ids that were new; `stored_payload_shas` tells a redelivery from a
  conflict (same id, other content);
- dead letters are unique by (topic, partition, offset, reason); the outbox
  hands out unpublished rows oldest first (`claim_unpublished_dead_letters`)
  until `mark_dead_letters_published`;
- counters add (`add_day_counters`, `add_user_day_started`); the last offset
  per (group, topic, partition) only moves forward (GREATEST);
- sessions and users are replaced by `save_*` (version + 1), except what never
  changes (a session's user, scenario, start and business day);
- cache entries add their use and hit counts (last_used_at: the latest); the
  content is the latest miss's by `cached_at` (a tie: the later write);
- `now` inside a unit is the time it started (PostgreSQL's `now()`).

The row types of the write path live here too (`postgres.py` and `caches.py`
re-export them), so an implementation needs nothing of another.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from schemas.events import Event
from streams.model import (
    AiEntry,
    CachedAiResponse,
    CachedVoiceClip,
    DayCounters,
    SessionState,
    UserState,
    VoiceEntry,
)


# --- rows ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An accepted event with where it came from."""

    event: Event
    topic: str
    partition: int
    offset: int
    payload: bytes
    """What the event log keeps: `Event.stored_json()`, computed once."""
    key: bytes | None = None
    raw: bytes | None = None
    """The message as received, kept for a dead letter raised after decoding."""


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    reason: str
    detail: str
    event_id: str | None
    original: bytes | None


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A `dead_letters` row claimed for publishing."""

    id: int
    topic: str
    kafka_partition: int
    kafka_offset: int
    message_key: bytes | None
    reason: str
    detail: str
    event_id: str | None
    original: bytes | None
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class VoiceSource:
    """Which miss's clip a row holds (read without the audio)."""

    speaker_id: int
    text_hash: str
    cached_at: datetime
    source_event_id: str | None


def payload_sha(payload: bytes) -> bytes:
    """What the event log keeps of a payload to tell a conflict from a redelivery."""
    return hashlib.sha256(payload).digest()


# --- the contract -------------------------------------------------------------------------
class Tx(Protocol):
    """The operations of one unit of work (one transaction), each one round trip."""

    # events
    async def insert_events(self, stored: Sequence[StoredEvent]) -> set[str]:
        """Store events not stored yet (by event_id); return the ids that were new."""
        ...

    async def stored_payload_shas(self, event_ids: Iterable[str]) -> dict[str, bytes]:
        """payload_sha of the stored events among `event_ids`."""
        ...

    async def same_stored_payloads(self, payloads: Sequence[tuple[str, bytes]]) -> set[int]:
        """The positions in `payloads` (event_id, payload JSON) whose stored payload is
        the same JSON value (object keys in any order, 1 and 1.0 alike: jsonb equality);
        by position, since one batch may repeat an event_id with different payloads."""
        ...

    # dead letters and their outbox
    async def insert_dead_letters(self, rows: Sequence[DeadLetterRow]) -> None:
        """Keep each row once per (topic, partition, offset, reason)."""
        ...

    async def claim_unpublished_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        """Up to `limit` unpublished rows, oldest first, no other unit holds."""
        ...

    async def mark_dead_letters_published(self, ids: Sequence[int]) -> None: ...

    # the last offset handled per partition
    async def record_positions(self, group: str, positions: dict[tuple[str, int], int]) -> None:
        """Keep the highest offset per (group, topic, partition)."""
        ...

    # sessions and users
    async def lock_sessions(self, session_ids: Iterable[str]) -> dict[str, SessionState]: ...

    async def load_sessions(self, session_ids: Iterable[str]) -> dict[str, SessionState]: ...

    async def lock_idle_sessions(self, idle_since: datetime, limit: int) -> dict[str, SessionState]:
        """Up to `limit` open sessions last active at or before `idle_since`, by id."""
        ...

    async def lock_users(self, user_ids: Iterable[str]) -> dict[str, UserState]: ...

    async def save_sessions(self, sessions: Iterable[SessionState]) -> None: ...

    async def save_users(self, users: Iterable[UserState]) -> None: ...

    async def add_user_day_started(self, counts: Counter[tuple[str, date]]) -> None: ...

    async def user_day_started(
        self, keys: Iterable[tuple[str, date]]
    ) -> dict[tuple[str, date], int]:
        """The sessions started per (user, day) among `keys` (absent: none started)."""
        ...

    # daily counters and the stats writer
    async def add_day_counters(self, counts: Counter[tuple[date, str]]) -> None: ...

    async def day_counters(self, days: Iterable[date]) -> dict[date, DayCounters]: ...

    async def days_changed_since(self, since: datetime) -> set[date]:
        """Days with a counter added to by a unit that started after `since`."""
        ...

    async def count_open_sessions(self, now: datetime, idle_after_s: float) -> int: ...

    async def touch_stats_days(self, days: Iterable[date]) -> dict[date, datetime]:
        """Stamp `days` as written at this unit's `now`; return the stamps."""
        ...

    # AI responses and voice clips
    async def upsert_ai_entries(self, entries: Sequence[AiEntry]) -> None: ...

    async def upsert_voice_entries(self, entries: Sequence[VoiceEntry]) -> None: ...

    async def ai_responses(self, prompt_hashes: Iterable[str]) -> list[CachedAiResponse]:
        """The rows among `prompt_hashes` that hold a response."""
        ...

    async def voice_sources(self, keys: Iterable[tuple[int, str]]) -> list[VoiceSource]:
        """Which miss each held clip among `keys` comes from (without the audio)."""
        ...

    async def voice_clip_of(self, speaker_id: int, text_hash: str) -> CachedVoiceClip | None: ...


class Store(Protocol):
    """Where the write path keeps its state."""

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """One unit of work: `async with store.transaction() as tx:`; all or nothing."""
        ...
