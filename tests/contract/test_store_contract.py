"""One contract of the write path's store (`streams.store.base`), on every implementation.

`TestStoreContract` runs once on the in-memory store (a pure test, part of
`make test-unit`) and once on PostgreSQL (marked `integration`: a database of
its own on the running stack, migrated as the worker migrates it, emptied
before each test). Every test goes through the `Store` and its `Tx` only, but
for what no write-path operation reads back (use counts, the last offsets,
how many events are stored): `Backend` looks at those directly.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from schemas.events import Rejection, decode_event
from streams.model import (
    AiEntry,
    CachedAiResponse,
    CachedVoiceClip,
    DayCounters,
    SessionState,
    UserState,
    VoiceEntry,
)
from streams.settings import get_settings
from streams.store import postgres as pg
from streams.store.base import DeadLetterRow, Store, StoredEvent, VoiceSource, payload_sha
from streams.store.memory import MemoryStore
from streams.store.postgres_store import PostgresStore
from streams.worker.runtime import open_pool
from tests import needs

T0 = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
D1, D2, D3 = date(2025, 1, 30), date(2025, 1, 31), date(2025, 2, 1)
TOPIC = "p.session-events"
TABLES = (
    "events, sessions, users, user_daily_sessions, daily_counters, daily_stats_writes,"
    " consumer_positions, dead_letters, ai_responses, voice_clips"
)


class AbortedError(Exception):
    """Raised inside a unit of work to roll it back."""


# --- the two implementations --------------------------------------------------------------
class Backend(Protocol):
    store: Store

    async def uses(self, table: str, key: tuple[Any, ...]) -> tuple[int, int, datetime]:
        """(use_count, hit_count, last_used_at) of a cache row."""
        ...

    async def last_offsets(self, group: str) -> dict[tuple[str, int], int]: ...

    async def event_count(self) -> int: ...


class MemoryBackend:
    def __init__(self) -> None:
        self.memory = MemoryStore()
        self.store: Store = self.memory

    async def uses(self, table: str, key: tuple[Any, ...]) -> tuple[int, int, datetime]:
        rows: Any = self.memory.tables.ai if table == "ai" else self.memory.tables.voice
        row = rows[key[0] if table == "ai" else key]
        return row.use_count, row.hit_count, row.last_used_at

    async def last_offsets(self, group: str) -> dict[tuple[str, int], int]:
        return {(t, p): o for (g, t, p), o in self.memory.tables.last_offsets.items() if g == group}

    async def event_count(self) -> int:
        return len(self.memory.tables.events)


class PostgresBackend:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.store: Store = PostgresStore(pool)

    async def uses(self, table: str, key: tuple[Any, ...]) -> tuple[int, int, datetime]:
        if table == "ai":
            sql = (
                "SELECT use_count, hit_count, last_used_at FROM ai_responses WHERE prompt_hash = $1"
            )
        else:
            sql = (
                "SELECT use_count, hit_count, last_used_at FROM voice_clips"
                " WHERE speaker_id = $1 AND text_hash = $2"
            )
        row = await self.pool.fetchrow(sql, *key)
        assert row is not None
        return row[0], row[1], row[2]

    async def last_offsets(self, group: str) -> dict[tuple[str, int], int]:
        return await pg.last_offsets(self.pool, group)

    async def event_count(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM events"))


class PostgresDatabase:
    """A database of this module's own on the stack's PostgreSQL, created on first use."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self.name = f"rpcache_contract_{uuid.uuid4().hex[:8]}"
        base = get_settings()
        self.admin_url = self._url(base.database_url.get_secret_value(), "postgres")
        self.settings = base.model_copy(
            update={
                "database_url": SecretStr(
                    self._url(base.database_url.get_secret_value(), self.name)
                )
            }
        )

    @staticmethod
    def _url(url: str, db: str) -> str:
        return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))

    async def open(self) -> asyncpg.Pool:
        if self.pool is None:
            try:
                conn = await asyncpg.connect(self.admin_url, timeout=3)
            except Exception as exc:
                needs.missing(
                    f"PostgreSQL does not answer ({type(exc).__name__}: {exc}); start the stack"
                    " with `.venv/bin/rpcache stack up`"
                )
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()
            self.pool = await open_pool(self.settings)  # migrated, as the worker does
        return self.pool

    async def close(self) -> None:
        if self.pool is None:
            return
        await self.pool.close()
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def postgres_database() -> AsyncIterator[PostgresDatabase]:
    database = PostgresDatabase()
    yield database
    await database.close()


@pytest.fixture(
    params=[
        pytest.param("memory"),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def backend(
    request: pytest.FixtureRequest, postgres_database: PostgresDatabase
) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
        return
    pool = await postgres_database.open()
    await pool.execute(f"TRUNCATE {TABLES} RESTART IDENTITY")
    yield PostgresBackend(pool)


# --- values -------------------------------------------------------------------------------
def uid() -> str:
    return str(uuid.uuid4())


def event(event_id: str | None = None, *, user: str = "u1", scene: str = "cafe") -> StoredEvent:
    value = orjson.dumps(
        {
            "type": "session.started",
            "event_id": event_id or uid(),
            "occurred_at": T0.isoformat(),
            "user_id": user,
            "session_id": uid(),
            "speaker_id": 6,
            "conversation_context": {"scene": scene},
        }
    )
    decoded = decode_event(value, topic=None, max_bytes=1 << 20)
    assert not isinstance(decoded, Rejection), decoded
    return StoredEvent(decoded, TOPIC, 0, 7, decoded.stored_json(), b"u1", value)


def dead_letter(offset: int, reason: str = "invalid_json", detail: str = "bad") -> DeadLetterRow:
    return DeadLetterRow(TOPIC, 0, offset, b"k", reason, detail, None, b"{bad")


def session(sid: str, **changes: Any) -> SessionState:
    base = SessionState(
        session_id=sid,
        user_id="u1",
        status="active",
        speaker_id=6,
        scenario_id="s1",
        conversation_context={"scene": "cafe", "n": [1, 2.5, None]},
        performance_stats=None,
        started_at=T0,
        business_day=D1,
        last_activity=T0,
    )
    return replace(base, **changes)


def user(user_id: str, **changes: Any) -> UserState:
    base = UserState(user_id, None, None, None, last_seen=T0)
    return replace(base, **changes)


def ai(at: datetime | None, response: str = "r", *, h: str = "h1") -> AiEntry:
    """A miss (content, cached at `at`) or, with `at=None`, a hit."""
    miss = at is not None
    return AiEntry(
        prompt_hash=h,
        prompt="the prompt",
        response=response if miss else None,
        provider="openai" if miss else None,
        model="gpt" if miss else None,
        cached_at=at,
        source_event_id=uid() if miss else None,
        uses=1,
        hits=0 if miss else 1,
        last_used_at=at or T0 + timedelta(hours=1),
    )


def voice(at: datetime | None, audio: bytes = b"RIFF", *, h: str = "t1") -> VoiceEntry:
    miss = at is not None
    return VoiceEntry(
        speaker_id=6,
        text_hash=h,
        text="the text",
        audio=audio if miss else None,
        audio_format="wav" if miss else None,
        cached_at=at,
        source_event_id=uid() if miss else None,
        uses=1,
        hits=0 if miss else 1,
        last_used_at=at or T0 + timedelta(hours=1),
    )


def near_now(moment: datetime) -> bool:
    return abs(moment - datetime.now(UTC)) < timedelta(minutes=1)


# --- the contract -------------------------------------------------------------------------
class TestStoreContract:
    # events
    async def test_events_are_stored_once_by_event_id(self, backend: Backend) -> None:
        a, b, c, d = event(), event(), event(), event()
        async with backend.store.transaction() as tx:
            assert await tx.insert_events([]) == set()
            assert await tx.insert_events([a, b]) == {a.event.event_id, b.event.event_id}
        async with backend.store.transaction() as tx:
            assert await tx.insert_events([b, c]) == {c.event.event_id}
            # twice in one call: the first is new, the second a duplicate of it
            assert await tx.insert_events([d, d]) == {d.event.event_id}
        assert await backend.event_count() == 4

    async def test_a_conflict_keeps_the_first_payload(self, backend: Backend) -> None:
        first = event(scene="cafe")
        other = event(first.event.event_id, scene="station")
        unknown = uid()
        async with backend.store.transaction() as tx:
            assert await tx.insert_events([first]) == {first.event.event_id}
            # a unit reads its own writes
            assert await tx.stored_payload_shas([first.event.event_id]) == {
                first.event.event_id: payload_sha(first.payload)
            }
        async with backend.store.transaction() as tx:
            assert await tx.insert_events([other]) == set()
            shas = await tx.stored_payload_shas([first.event.event_id, unknown])
        assert shas == {first.event.event_id: payload_sha(first.payload)}
        assert payload_sha(other.payload) != payload_sha(first.payload)

    # dead letters and the outbox
    async def test_dead_letters_are_unique_by_topic_partition_offset_reason(
        self, backend: Backend
    ) -> None:
        async with backend.store.transaction() as tx:
            await tx.insert_dead_letters([])
            await tx.insert_dead_letters([dead_letter(1), dead_letter(1, detail="again")])
        async with backend.store.transaction() as tx:
            await tx.insert_dead_letters(
                [dead_letter(1, detail="later"), dead_letter(1, "unknown_session"), dead_letter(2)]
            )
            rows = await tx.claim_unpublished_dead_letters(10)
        assert [(r.kafka_offset, r.reason, r.detail) for r in rows] == [
            (1, "invalid_json", "bad"),
            (1, "unknown_session", "bad"),
            (2, "invalid_json", "bad"),
        ]
        first = rows[0]
        assert (first.topic, first.kafka_partition, first.message_key) == (TOPIC, 0, b"k")
        assert (first.event_id, first.original) == (None, b"{bad")
        assert first.created_at is not None and near_now(first.created_at)
        assert rows[0].id < rows[1].id < rows[2].id

    async def test_the_outbox_hands_out_unpublished_rows_oldest_first(
        self, backend: Backend
    ) -> None:
        async with backend.store.transaction() as tx:
            await tx.insert_dead_letters([dead_letter(n) for n in (5, 3, 4)])
        async with backend.store.transaction() as tx:
            claimed = await tx.claim_unpublished_dead_letters(2)
            assert [r.kafka_offset for r in claimed] == [5, 3]  # by id: insertion order
            await tx.mark_dead_letters_published([r.id for r in claimed])
        with pytest.raises(AbortedError):  # a claim whose publication failed: rolled back
            async with backend.store.transaction() as tx:
                [left] = await tx.claim_unpublished_dead_letters(10)
                await tx.mark_dead_letters_published([left.id])
                raise AbortedError
        async with backend.store.transaction() as tx:
            [left] = await tx.claim_unpublished_dead_letters(10)
            assert left.kafka_offset == 4
            await tx.mark_dead_letters_published([left.id])
        async with backend.store.transaction() as tx:
            assert await tx.claim_unpublished_dead_letters(10) == []

    # last offsets
    async def test_the_last_offset_only_moves_forward(self, backend: Backend) -> None:
        async with backend.store.transaction() as tx:
            await tx.record_positions("g", {})
            await tx.record_positions("g", {(TOPIC, 0): 5, (TOPIC, 1): 3})
        async with backend.store.transaction() as tx:
            await tx.record_positions("g", {(TOPIC, 0): 4, (TOPIC, 1): 7})
            await tx.record_positions("other", {(TOPIC, 0): 1})
        assert await backend.last_offsets("g") == {(TOPIC, 0): 5, (TOPIC, 1): 7}
        assert await backend.last_offsets("other") == {(TOPIC, 0): 1}

    # sessions and users
    async def test_sessions_are_saved_and_read_back(self, backend: Backend) -> None:
        sid, unknown = uid(), uid()
        async with backend.store.transaction() as tx:
            await tx.save_sessions([session(sid, version=9)])  # the store numbers versions
            locked = await tx.lock_sessions([sid, unknown])
        assert locked == {sid: session(sid, version=1)}
        later = T0 + timedelta(minutes=5)
        changed = session(
            sid,
            status="ended",
            speaker_id=7,
            conversation_context={"scene": "station"},
            performance_stats={"wpm": 120},
            last_activity=later,
            ended_at=later,
            end_reason="user_left",
            # never changed by a save: whose session it is, its scenario, start and day
            user_id="u2",
            scenario_id="s2",
            started_at=later,
            business_day=D2,
        )
        async with backend.store.transaction() as tx:
            await tx.save_sessions([changed])
            await tx.save_sessions([])
        expected = session(
            sid,
            status="ended",
            speaker_id=7,
            conversation_context={"scene": "station"},
            performance_stats={"wpm": 120},
            last_activity=later,
            ended_at=later,
            end_reason="user_left",
            version=2,
        )
        async with backend.store.transaction() as tx:
            assert await tx.lock_sessions([sid]) == {sid: expected}
            assert await tx.load_sessions([sid, unknown]) == {sid: expected}
            assert await tx.lock_sessions([]) == {}

    async def test_a_loaded_state_is_a_copy(self, backend: Backend) -> None:
        sid = uid()
        async with backend.store.transaction() as tx:
            await tx.save_sessions([session(sid)])
            loaded = (await tx.lock_sessions([sid]))[sid]
            assert loaded.conversation_context is not None
            loaded.conversation_context["scene"] = "changed in memory only"
            loaded.status = "paused"
        async with backend.store.transaction() as tx:
            assert (await tx.load_sessions([sid]))[sid] == session(sid)

    async def test_users_are_saved_and_read_back(self, backend: Backend) -> None:
        sid = uid()
        async with backend.store.transaction() as tx:
            await tx.save_users([user("u1"), user("u2", preferences={"lang": "ja"})])
        renewed = user(
            "u1",
            current_session_id=sid,
            last_login=T0,
            preferences={"lang": "en"},
            last_seen=T0 + timedelta(minutes=1),
        )
        async with backend.store.transaction() as tx:
            await tx.save_users([renewed])
            users = await tx.lock_users(["u1", "u2", "u3"])
        assert users == {
            "u1": replace(renewed, version=2),
            "u2": user("u2", preferences={"lang": "ja"}, version=1),
        }

    async def test_idle_and_open_sessions(self, backend: Backend) -> None:
        ids = sorted(uid() for _ in range(4))
        old, recent = T0, T0 + timedelta(minutes=40)
        async with backend.store.transaction() as tx:
            await tx.save_sessions(
                [
                    session(ids[0], status="paused", last_activity=old),
                    session(ids[1], status="ended", last_activity=old, ended_at=old),
                    session(ids[2], status="active", last_activity=recent),
                    session(ids[3], status="active", last_activity=old),
                ]
            )
        idle_since = T0 + timedelta(minutes=10)
        async with backend.store.transaction() as tx:
            assert set(await tx.lock_idle_sessions(idle_since, 10)) == {ids[0], ids[3]}
            assert set(await tx.lock_idle_sessions(idle_since, 1)) == {ids[0]}  # by id
            assert set(await tx.lock_idle_sessions(old, 10)) == {ids[0], ids[3]}  # at or before
            now = T0 + timedelta(minutes=45)
            assert await tx.count_open_sessions(now, 30 * 60) == 1  # active within 30 min
            assert await tx.count_open_sessions(now, 60 * 60) == 3
            assert await tx.count_open_sessions(now, 5 * 60) == 0  # strictly after

    async def test_sessions_started_per_user_and_day_add_up(self, backend: Backend) -> None:
        async with backend.store.transaction() as tx:
            await tx.add_user_day_started(Counter({("u1", D1): 1, ("u2", D1): 2}))
            await tx.add_user_day_started(Counter())
        async with backend.store.transaction() as tx:
            await tx.add_user_day_started(Counter({("u1", D1): 2, ("u1", D2): 1}))
            started = await tx.user_day_started([("u1", D1), ("u2", D1), ("u1", D2), ("u3", D1)])
            assert await tx.user_day_started([]) == {}
        assert started == {("u1", D1): 3, ("u2", D1): 2, ("u1", D2): 1}

    # counters and the stats writer
    async def test_day_counters_add_up(self, backend: Backend) -> None:
        big = 2**62  # two of them overflow a bigint: the table's value is numeric
        async with backend.store.transaction() as tx:
            await tx.add_day_counters(
                Counter({(D1, "sessions_started"): 2, (D1, "ai_latency_us"): big})
            )
            await tx.add_day_counters(Counter())
        async with backend.store.transaction() as tx:
            await tx.add_day_counters(
                Counter(
                    {(D1, "sessions_started"): 3, (D1, "ai_latency_us"): big, (D2, "voice_hits"): 1}
                )
            )
            counters = await tx.day_counters([D1, D2, D3])
        assert counters == {
            D1: DayCounters(sessions_started=5, ai_latency_us=2 * big),
            D2: DayCounters(voice_hits=1),
            D3: DayCounters(),
        }

    async def test_days_changed_since_and_stats_stamps(self, backend: Backend) -> None:
        before = datetime.now(UTC) - timedelta(minutes=1)
        async with backend.store.transaction() as tx:
            await tx.add_day_counters(Counter({(D1, "ai_hits"): 1, (D2, "ai_misses"): 1}))
        async with backend.store.transaction() as tx:
            assert await tx.days_changed_since(before) == {D1, D2}
            assert await tx.days_changed_since(datetime.now(UTC) + timedelta(minutes=1)) == set()
            stamps = await tx.touch_stats_days([D1, D3, D1])
        assert set(stamps) == {D1, D3}
        assert stamps[D1] == stamps[D3] and near_now(stamps[D1])  # the unit's `now`
        async with backend.store.transaction() as tx:
            again = await tx.touch_stats_days([D1])
        assert again[D1] >= stamps[D1]

    # AI responses and voice clips
    async def test_ai_entries_count_uses_and_keep_the_latest_miss(self, backend: Backend) -> None:
        t1, t2, t3 = T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
        steps: list[tuple[list[AiEntry], str | None]] = [
            ([ai(None)], None),  # a hit only: counted, holds nothing
            ([ai(t2, "B")], "B"),
            ([ai(t1, "A")], "B"),  # an older miss arriving later loses
            ([ai(t2, "C")], "C"),  # a tie: the later write
            ([ai(t3, "D"), ai(t1, "E"), ai(None)], "D"),  # in one call, in order
        ]
        for entries, held in steps:
            async with backend.store.transaction() as tx:
                await tx.upsert_ai_entries(entries)
                await tx.upsert_ai_entries([])
                got = await tx.ai_responses(["h1", "unknown"])
            assert [r.response for r in got] == ([held] if held else [])
        assert got == [CachedAiResponse("h1", "D", "openai", "gpt", t3)]
        assert await backend.uses("ai", ("h1",)) == (7, 2, T0 + timedelta(hours=1))

    async def test_voice_entries_count_uses_and_keep_the_latest_miss(
        self, backend: Backend
    ) -> None:
        t1, t2 = T0, T0 + timedelta(minutes=1)
        async with backend.store.transaction() as tx:
            await tx.upsert_voice_entries([voice(None)])
            assert await tx.voice_sources([(6, "t1")]) == []  # a hit only holds no clip
            assert await tx.voice_clip_of(6, "t1") is None
        latest = voice(t2, b"NEW")
        async with backend.store.transaction() as tx:
            await tx.upsert_voice_entries([latest, voice(t1, b"OLD")])
            await tx.upsert_voice_entries([])
        async with backend.store.transaction() as tx:
            sources = await tx.voice_sources([(6, "t1"), (6, "unknown"), (7, "t1")])
            clip = await tx.voice_clip_of(6, "t1")
            assert await tx.voice_clip_of(6, "unknown") is None
        assert sources == [VoiceSource(6, "t1", t2, latest.source_event_id)]
        assert clip == CachedVoiceClip(6, "t1", base64.b64encode(b"NEW").decode(), t2)
        assert await backend.uses("voice", (6, "t1")) == (3, 1, T0 + timedelta(hours=1))

    async def test_an_empty_clip_is_still_a_clip(self, backend: Backend) -> None:
        async with backend.store.transaction() as tx:
            await tx.upsert_voice_entries([voice(T0, b"", h="empty")])
            assert await tx.voice_clip_of(6, "empty") == CachedVoiceClip(6, "empty", "", T0)

    # all or nothing
    async def test_a_unit_that_raises_leaves_nothing_behind(self, backend: Backend) -> None:
        sid = uid()
        e = event()
        with pytest.raises(AbortedError):
            async with backend.store.transaction() as tx:
                assert await tx.insert_events([e]) == {e.event.event_id}
                await tx.insert_dead_letters([dead_letter(1)])
                await tx.record_positions("g", {(TOPIC, 0): 9})
                await tx.save_sessions([session(sid)])
                await tx.save_users([user("u1")])
                await tx.add_user_day_started(Counter({("u1", D1): 1}))
                await tx.add_day_counters(Counter({(D1, "sessions_started"): 1}))
                await tx.upsert_ai_entries([ai(T0)])
                await tx.upsert_voice_entries([voice(T0)])
                await tx.touch_stats_days([D1])
                assert set(await tx.lock_sessions([sid])) == {sid}  # visible inside
                raise AbortedError
        async with backend.store.transaction() as tx:
            assert await tx.stored_payload_shas([e.event.event_id]) == {}
            assert await tx.claim_unpublished_dead_letters(10) == []
            assert await tx.lock_sessions([sid]) == {}
            assert await tx.lock_users(["u1"]) == {}
            assert await tx.user_day_started([("u1", D1)]) == {}
            assert await tx.day_counters([D1]) == {D1: DayCounters()}
            assert await tx.days_changed_since(T0 - timedelta(days=3650)) == set()
            assert await tx.ai_responses(["h1"]) == []
            assert await tx.voice_clip_of(6, "t1") is None
        assert await backend.last_offsets("g") == {}
        assert await backend.event_count() == 0
        # … and the same writes, committed, are all there
        async with backend.store.transaction() as tx:
            assert await tx.insert_events([e]) == {e.event.event_id}
            await tx.save_sessions([session(sid)])
            await tx.record_positions("g", {(TOPIC, 0): 9})
        async with backend.store.transaction() as tx:
            assert set(await tx.lock_sessions([sid])) == {sid}
        assert await backend.last_offsets("g") == {(TOPIC, 0): 9}
