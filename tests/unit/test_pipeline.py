"""`BatchPipeline` on its own: the in-memory store, a recording Redis writer and publisher.

No sockets: `streams.store.memory.MemoryStore` keeps the store's contract
(tests/contract/), the Redis writer and the publisher only record what they
are given. Each test reads what a batch left in the store, what reached Redis
and what was published, and in which order (`Run.log`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
import redis.exceptions

from schemas.events import RejectReason
from schemas.hashing import H
from schemas.keys import INFERENCE_TOPIC, SESSION_TOPIC, SYNTHESIS_TOPIC, session_key
from streams.model import DayCounters
from streams.projections import RedisOp
from streams.store.memory import MemoryStore, MemoryTx
from streams.write.handlers.base import Handler
from streams.write.handlers.caches import CacheHandler
from streams.write.handlers.sessions import SessionHandler
from streams.write.pipeline import BatchOutcome, BatchPipeline, RawMessage

PREFIX = "p."
DEAD_LETTERS = "p.dead-letters"
GROUP = "g"
UTC_TZ = ZoneInfo("UTC")
NOW = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
DAY = NOW.date()
AUDIO = "UklGRg=="  # base64 of b"RIFF"

Fault = Callable[[str, tuple[Any, ...]], BaseException | None]
"""(store operation, its arguments) → the exception it raises this time, or None."""


# --- the fakes ----------------------------------------------------------------------------
class RecordingStore:
    """The in-memory store, with every unit of work and operation logged, and faults."""

    def __init__(self, log: list[str], fault: Fault | None = None) -> None:
        self.memory = MemoryStore(clock=lambda: NOW)
        self.log = log
        self.fault = fault

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_RecordingTx]:
        async with self.memory.transaction() as tx:
            self.log.append("begin")
            try:
                yield _RecordingTx(tx, self)
            except BaseException:
                self.log.append("rollback")
                raise
        self.log.append("commit")


class _RecordingTx:
    def __init__(self, tx: MemoryTx, store: RecordingStore) -> None:
        self._tx, self._store = tx, store

    def __getattr__(self, name: str) -> Callable[..., Any]:
        op = getattr(self._tx, name)

        async def call(*args: Any) -> Any:
            self._store.log.append(f"store.{name}")
            if self._store.fault is not None and (exc := self._store.fault(name, args)):
                raise exc
            return await op(*args)

        return call


@dataclass
class Run:
    """A pipeline of one handler on the fakes, and what they saw."""

    handler: Handler
    fault: Fault | None = None
    redis_fails: list[BaseException] = field(default_factory=list)
    publish_fails: list[BaseException] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    redis_ops: list[RedisOp] = field(default_factory=list)
    published: list[dict[str, Any]] = field(default_factory=list)
    committed_at_redis: list[set[str]] = field(default_factory=list)
    """The session ids the store held (committed) each time Redis was written."""

    def __post_init__(self) -> None:
        self.store = RecordingStore(self.log, self.fault)
        self.pipeline = BatchPipeline(
            handler=self.handler,
            topic_prefix=PREFIX,
            consumer_group=GROUP,
            store=self.store,
            write_redis=self._write_redis,
            publish=self._publish,
            dead_letter_topic=DEAD_LETTERS,
            max_event_bytes=64 * 1024,
            max_audio_bytes=64 * 1024,
            max_backoff_s=0.01,
            clock=lambda: NOW,
        )

    async def _write_redis(self, ops: Sequence[RedisOp]) -> None:
        self.log.append("redis")
        self.committed_at_redis.append(set(self.tables.sessions))
        if self.redis_fails:
            raise self.redis_fails.pop(0)
        self.redis_ops += ops

    async def _publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        assert topic == DEAD_LETTERS
        self.log.append("publish")
        if self.publish_fails:
            raise self.publish_fails.pop(0)
        self.published.append(orjson.loads(value))

    @property
    def tables(self) -> Any:
        return self.store.memory.tables

    async def process(self, *messages: RawMessage) -> BatchOutcome:
        return await self.pipeline.process(list(messages))

    def steps(self) -> list[str]:
        """The log without the store's operations: units of work, Redis, publications."""
        return [s for s in self.log if not s.startswith("store.") and s != "begin"]

    def reasons(self) -> list[str]:
        return sorted(d.reason for d in self.tables.dead_letters.values())


def sessions() -> SessionHandler:
    return SessionHandler(tz=UTC_TZ, quota=50)


def inference() -> CacheHandler:
    return CacheHandler(INFERENCE_TOPIC, UTC_TZ)


def synthesis() -> CacheHandler:
    return CacheHandler(SYNTHESIS_TOPIC, UTC_TZ)


# --- messages -----------------------------------------------------------------------------
def new_id() -> str:
    return str(uuid.uuid4())


def at(seconds: float) -> str:
    return (NOW - timedelta(seconds=100) + timedelta(seconds=seconds)).isoformat()


def started(sid: str, user: str = "u1", t: float = 0, **extra: Any) -> dict[str, Any]:
    return {
        "type": "session.started",
        "event_id": new_id(),
        "occurred_at": at(t),
        "user_id": user,
        "session_id": sid,
        "speaker_id": 6,
        **extra,
    }


def activity(sid: str, user: str = "u1", t: float = 1) -> dict[str, Any]:
    return {
        "type": "session.activity",
        "event_id": new_id(),
        "occurred_at": at(t),
        "user_id": user,
        "session_id": sid,
    }


def ai_response(prompt: str = "hello", hit: bool = False) -> dict[str, Any]:
    return {
        "type": "ai.response",
        "event_id": new_id(),
        "occurred_at": at(2),
        "user_id": "u1",
        "session_id": new_id(),
        "prompt": prompt,
        "response": f"answer to {prompt}",
        "provider": "openai",
        "model": "gpt",
        "latency_ms": 120.0,
        "cache_hit": hit,
    }


def voice(text: str = "hello") -> dict[str, Any]:
    return {
        "type": "voice.synthesized",
        "event_id": new_id(),
        "occurred_at": at(3),
        "user_id": "u1",
        "session_id": new_id(),
        "speaker_id": 6,
        "text": text,
        "audio": AUDIO,
        "latency_ms": 80.0,
    }


TOPIC = {"session": SESSION_TOPIC, "ai": INFERENCE_TOPIC, "voice": SYNTHESIS_TOPIC}


def msg(
    offset: int, value: dict[str, Any] | bytes | None, topic: str = SESSION_TOPIC
) -> RawMessage:
    raw = orjson.dumps(value) if isinstance(value, dict) else value
    return RawMessage(PREFIX + topic, 0, offset, b"u1", raw)


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event failing alone is tried twice more after 0.5 s and 2 s: not here."""
    monkeypatch.setattr("streams.write.pipeline.SINGLE_EVENT_RETRY_PAUSES_S", (0.0, 0.0))


# --- 1. decode ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", RejectReason.INVALID_JSON),
        (None, RejectReason.INVALID_JSON),  # a tombstone
        (b"[1, 2]", RejectReason.NOT_AN_OBJECT),
        ({"type": "session.nope", "event_id": new_id()}, RejectReason.UNKNOWN_TYPE),
        ({"type": "session.started", "event_id": new_id()}, RejectReason.INVALID_FIELDS),
        (ai_response(), RejectReason.WRONG_TOPIC),
        (started(new_id(), speaker_id=2**40), RejectReason.OUT_OF_RANGE),
        (
            {**started(new_id()), "occurred_at": (NOW + timedelta(hours=1)).isoformat()},
            RejectReason.OCCURRED_IN_FUTURE,
        ),
        (b"x" * (64 * 1024 + 1), RejectReason.TOO_LARGE),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_a_bad_message_is_a_dead_letter_with_its_reason(
    value: dict[str, Any] | bytes | None, reason: RejectReason
) -> None:
    run = Run(sessions())
    sid = new_id()
    outcome = await run.process(msg(10, value), msg(11, started(sid)))
    assert (outcome.accepted, outcome.new, outcome.dead_letters) == (1, 1, 1)
    assert outcome.reasons == [reason]
    [row] = run.tables.dead_letters.values()
    assert (row.topic, row.kafka_offset, row.reason) == (PREFIX + SESSION_TOPIC, 10, reason)
    assert row.original == (orjson.dumps(value) if isinstance(value, dict) else value)
    [message] = run.published
    assert (message["reason"], message["offset"]) == (reason, 10)
    assert set(run.tables.sessions) == {sid}  # the good event of the batch went through
    assert run.tables.last_offsets == {(GROUP, PREFIX + SESSION_TOPIC, 0): 11}


async def test_a_rejection_of_the_reducer_is_a_dead_letter_too() -> None:
    run = Run(sessions())
    outcome = await run.process(msg(0, activity(new_id())))
    assert outcome.reasons == [RejectReason.UNKNOWN_SESSION]
    assert run.reasons() == [RejectReason.UNKNOWN_SESSION]
    assert [m["reason"] for m in run.published] == [RejectReason.UNKNOWN_SESSION]
    assert len(run.tables.events) == 1  # the event itself is in the log, rejected


# --- 2. duplicates and conflicts ----------------------------------------------------------
@pytest.mark.parametrize(
    ("make_handler", "kind", "event", "counters"),
    [
        (sessions, "session", lambda: started(new_id()), DayCounters(sessions_started=1)),
        (
            inference,
            "ai",
            ai_response,
            DayCounters(ai_misses=1, ai_latency_us=120_000),
        ),
        (synthesis, "voice", voice, DayCounters(voice_misses=1)),
    ],
    ids=["session", "ai", "voice"],
)
async def test_a_duplicate_event_has_no_effect_but_is_projected_again(
    make_handler: Callable[[], Handler],
    kind: str,
    event: Callable[[], dict[str, Any]],
    counters: DayCounters,
) -> None:
    run = Run(make_handler())
    value = event()
    first = await run.process(msg(0, value, TOPIC[kind]))
    tables_after_first = (
        dict(run.tables.events),
        dict(run.tables.sessions),
        dict(run.tables.ai),
        dict(run.tables.voice),
        dict(run.tables.day_counters),
    )
    again = await run.process(msg(1, value, TOPIC[kind]))  # redelivered (at another offset)
    same_batch = await run.process(msg(2, value, TOPIC[kind]), msg(3, value, TOPIC[kind]))
    assert (first.new, first.duplicates) == (1, 0)
    assert (again.new, again.duplicates, again.dead_letters) == (0, 1, 0)
    assert (same_batch.new, same_batch.duplicates, same_batch.dead_letters) == (0, 2, 0)
    assert (
        dict(run.tables.events),
        dict(run.tables.sessions),
        dict(run.tables.ai),
        dict(run.tables.voice),
        dict(run.tables.day_counters),
    ) == tables_after_first
    async with run.store.memory.transaction() as tx:
        assert (await tx.day_counters([DAY]))[DAY] == counters
    # A crash between commit and Redis is repaired by the redelivery: same keys again.
    assert again.redis_ops == first.redis_ops > 0
    assert run.published == []
    assert run.tables.last_offsets == {(GROUP, PREFIX + TOPIC[kind], 0): 3}


async def test_a_duplicate_within_one_batch_counts_once() -> None:
    run = Run(sessions())
    value = started(new_id())
    outcome = await run.process(msg(0, value), msg(1, value))
    assert (outcome.new, outcome.duplicates, outcome.dead_letters) == (1, 1, 0)
    assert run.tables.day_counters == {(DAY, "sessions_started"): 1}


RESENT = [  # (the context as a retry wrote it again, is it a conflict?)
    ('{"b":{"y":[1,2],"x":1.5},"a":1}', False),  # nested keys in another order
    ('{"a":1.0,"b":{"x":1.50,"y":[1.0,2]}}', False),  # the same numbers written otherwise
    ('{"a":2,"b":{"x":1.5,"y":[1,2]}}', True),  # a value changed
    ('{"a":true,"b":{"x":1.5,"y":[1,2]}}', True),  # 1 is not true in JSON
    ('{"a":1,"b":{"x":1.5,"y":[2,1]}}', True),  # arrays keep their order
]


@pytest.mark.parametrize(("context", "conflict"), RESENT)
@pytest.mark.parametrize("where", ["a later batch", "the same batch"])
async def test_a_retry_written_out_otherwise_is_a_redelivery(
    context: str, conflict: bool, where: str
) -> None:
    run = Run(sessions())
    first = orjson.dumps(started(new_id()))[:-1]
    sent = first + b',"conversation_context":{"a":1,"b":{"x":1.5,"y":[1,2]}}}'
    again = first + b',"conversation_context":' + context.encode() + b"}"
    if where == "a later batch":
        await run.process(msg(0, sent))
        outcome = await run.process(msg(1, again))
    else:
        outcome = await run.process(msg(0, sent), msg(1, again))
    assert outcome.reasons == ([RejectReason.DUPLICATE_EVENT_CONFLICT] if conflict else [])


@pytest.mark.parametrize("batches", [(3,), (1, 2), (2, 1), (1, 1, 1)])
async def test_a_redelivery_beside_a_conflict_of_the_same_event_id(
    batches: tuple[int, ...],
) -> None:
    """Told apart message by message, not by event_id: 1 then 1.0 (the same) then 2."""
    run = Run(sessions())
    head = orjson.dumps(started(new_id()))[:-1]
    contexts = (b'{"a":1}', b'{"a":1.0}', b'{"a":2}')
    messages = [
        msg(i, head + b',"conversation_context":' + c + b"}") for i, c in enumerate(contexts)
    ]
    reasons: list[RejectReason] = []
    start = 0
    for size in batches:
        reasons += (await run.process(*messages[start : start + size])).reasons
        start += size
    assert reasons == [RejectReason.DUPLICATE_EVENT_CONFLICT]
    [row] = run.tables.dead_letters.values()
    assert row.kafka_offset == 2


@pytest.mark.parametrize("where", ["a later batch", "the same batch"])
async def test_the_same_event_id_with_other_content_is_a_conflict(where: str) -> None:
    run = Run(sessions())
    sid = new_id()
    first = started(sid, conversation_context={"scene": "cafe"})
    other = {**first, "conversation_context": {"scene": "station"}}
    if where == "a later batch":
        await run.process(msg(0, first))
        outcome = await run.process(msg(1, other))
    else:
        outcome = await run.process(msg(0, first), msg(1, other))
    assert outcome.reasons == [RejectReason.DUPLICATE_EVENT_CONFLICT]
    [row] = run.tables.dead_letters.values()
    assert (row.kafka_offset, row.event_id) == (1, first["event_id"])
    assert [m["reason"] for m in run.published] == [RejectReason.DUPLICATE_EVENT_CONFLICT]
    # The first one stands.
    assert run.tables.sessions[sid].conversation_context == {"scene": "cafe"}
    assert orjson.loads(run.tables.events[first["event_id"]].payload)["conversation_context"] == {
        "scene": "cafe"
    }
    assert run.tables.day_counters == {(DAY, "sessions_started"): 1}


# --- 3. a failure splits the batch --------------------------------------------------------
def _poisoned(op: str, needle: str) -> Fault:
    """`op` fails (not transient: a bug, a value the server refuses) whenever its
    arguments mention `needle` (the bad event's id, session or user)."""

    def fault(name: str, args: tuple[Any, ...]) -> BaseException | None:
        if name != op:
            return None
        return RuntimeError("a bug") if needle in repr(args) else None

    return fault


@pytest.mark.parametrize(
    "op", ["insert_events", "lock_sessions", "save_sessions", "add_user_day_started"]
)
async def test_a_failing_event_splits_the_batch_and_only_it_is_dead_lettered(op: str) -> None:
    bad_sid = new_id()
    bad = started(bad_sid, user="bad-user")
    poison = {"insert_events": bad["event_id"], "add_user_day_started": "bad-user"}
    run = Run(sessions(), fault=_poisoned(op, poison.get(op, bad_sid)))
    good = [new_id(), new_id()]
    outcome = await run.process(
        msg(0, started(good[0])), msg(1, bad), msg(2, started(good[1], "u2"))
    )
    assert outcome.split is True
    assert (outcome.messages, outcome.accepted, outcome.new) == (3, 3, 2)
    assert outcome.reasons == [RejectReason.PROCESSING_ERROR]
    [row] = run.tables.dead_letters.values()
    assert (row.kafka_offset, row.reason) == (1, RejectReason.PROCESSING_ERROR)
    assert "a bug" in row.detail
    assert [m["reason"] for m in run.published] == [RejectReason.PROCESSING_ERROR]
    assert set(run.tables.sessions) == set(good)
    assert bad["event_id"] not in run.tables.events
    # Nothing is skipped: every offset is recorded as handled.
    assert run.tables.last_offsets == {(GROUP, PREFIX + SESSION_TOPIC, 0): 2}
    # The whole batch, then the bad event alone, 3 times: each attempt rolled back.
    assert run.steps().count("rollback") == 1 + 3


# --- 4. the order of the steps ------------------------------------------------------------
async def test_state_is_committed_before_redis_and_redis_before_the_dead_letters() -> None:
    run = Run(sessions())
    sid = new_id()
    outcome = await run.process(msg(0, started(sid)), msg(1, b"{bad"))
    assert outcome.dead_letters == 1
    assert run.steps() == [
        "commit",  # 2. events, state, dead letter rows and offsets: one unit of work
        "redis",  # 3. the projection of the committed state
        "publish",  # 4. the outbox: claim, publish, mark …
        "commit",  # … in one unit of work
        "commit",  # nothing left to claim
    ]
    assert run.committed_at_redis == [{sid}]  # Redis saw committed state only
    assert session_key(sid) in {op.key for op in run.redis_ops}


async def test_a_batch_without_dead_letters_publishes_nothing() -> None:
    run = Run(sessions())
    await run.process(msg(0, started(new_id())))
    assert run.steps() == ["commit", "redis"]


async def test_nothing_reaches_redis_or_kafka_while_the_transaction_fails() -> None:
    """The unit of work fails (transiently) twice: no Redis op and no publication
    until it commits, and then each exactly once."""
    failures = [ConnectionResetError("gone"), ConnectionResetError("gone again")]

    def fault(name: str, args: tuple[Any, ...]) -> BaseException | None:
        return failures.pop(0) if name == "record_positions" and failures else None

    run = Run(sessions(), fault=fault)
    outcome = await run.process(msg(0, started(new_id())), msg(1, b"{bad"))
    assert run.steps() == ["rollback", "rollback", "commit", "redis", "publish", "commit", "commit"]
    assert (outcome.new, outcome.dead_letters, outcome.retries, outcome.split) == (1, 1, 2, False)
    assert len(run.published) == 1


# --- 5. transient failures are retried, nothing skipped -----------------------------------
@pytest.mark.parametrize(
    "where", ["insert_events", "save_sessions", "record_positions", "redis", "publish"]
)
async def test_a_transient_failure_is_retried_without_skipping(where: str) -> None:
    failures: list[BaseException] = [ConnectionRefusedError("away"), TimeoutError("slow")]

    def fault(name: str, args: tuple[Any, ...]) -> BaseException | None:
        return failures.pop(0) if name == where and failures else None

    run = Run(sessions(), fault=fault)
    if where == "redis":
        run.redis_fails = [
            redis.exceptions.ConnectionError("reset"),
            redis.exceptions.TimeoutError(),
        ]
    if where == "publish":
        run.publish_fails = failures
    sids = [new_id(), new_id(), new_id()]
    messages = [msg(i, started(sid, user=f"u{i}")) for i, sid in enumerate(sids)]
    outcome = await run.process(*messages, msg(3, b"{bad"))
    assert outcome.retries == 2
    assert outcome.split is False
    assert (outcome.new, outcome.duplicates, outcome.dead_letters) == (3, 0, 1)
    assert set(run.tables.sessions) == set(sids)
    assert run.tables.day_counters == {(DAY, "sessions_started"): 3}
    assert run.reasons() == [RejectReason.INVALID_JSON]
    assert [m["offset"] for m in run.published] == [3]  # once, despite the retries
    assert run.tables.last_offsets == {(GROUP, PREFIX + SESSION_TOPIC, 0): 3}
    assert {session_key(s) for s in sids} <= {op.key for op in run.redis_ops}
    assert run.steps().index("redis") > run.steps().index("commit")


async def test_the_caches_of_a_batch_are_projected_from_the_stored_rows() -> None:
    """The inference handler through the pipeline: a hit counts, writes no response; the
    latest miss (by occurred_at) is the one projected."""
    run = Run(inference())
    late = {**ai_response("p"), "occurred_at": at(50), "response": "late"}
    early = {**ai_response("p"), "occurred_at": at(10), "response": "early"}
    await run.process(msg(0, late, INFERENCE_TOPIC))
    run.redis_ops.clear()
    await run.process(
        msg(1, early, INFERENCE_TOPIC), msg(2, ai_response("p", hit=True), INFERENCE_TOPIC)
    )
    row = run.tables.ai[H("p")]
    assert (row.response, row.use_count, row.hit_count) == ("late", 3, 1)
    [written] = [op for op in run.redis_ops if op.key == f"ai_response:{H('p')}"]
    assert orjson.loads(written.value)["response"] == "late"  # type: ignore[union-attr]
