"""Property-based tests of the validator and the reducers, and a fuzz run of the decoder."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import (
    TOPIC_OF_TYPE,
    USER_ID_PATTERN,
    Event,
    Rejection,
    SessionActivity,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SessionUpdated,
    UserLogin,
    decode_event,
)
from schemas.keys import session_key, user_state_key
from streams.model import SESSIONS_STARTED
from streams.reducers.caches import reduce_cache_events
from streams.reducers.sessions import reduce_session_events

UTC_TZ = ZoneInfo("UTC")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
user_ids = st.from_regex(USER_ID_PATTERN, fullmatch=True)
uuids = st.uuids().map(str)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(st.binary(max_size=2048))
def test_decoder_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    result = decode_event(raw, topic="session-events", max_bytes=1024)
    assert isinstance(result, Rejection | Event)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "event_id",
                "type",
                "occurred_at",
                "user_id",
                "session_id",
                "speaker_id",
                "prompt",
                "audio",
                "latency_ms",
                "cache_hit",
                "status",
                "x",
            ]
        ),
        json_values,
        max_size=10,
    )
)
def test_decoder_never_raises_on_arbitrary_objects(obj: dict[str, Any]) -> None:
    result = decode_event(orjson.dumps(obj), topic=None, max_bytes=100_000)
    if not isinstance(result, Rejection):
        # Accepted: then every id is safe to put in a key.
        for key in (user_state_key(result.user_id),):
            assert not any(c in key.split(":", 1)[1] for c in " {}") and key.count(":") == 2
        if hasattr(result, "session_id") and result.session_id:
            assert session_key(result.session_id).count(":") == 1


@given(user_ids, uuids, uuids, moments, st.integers(0, 2**31 - 1), json_values)
def test_valid_events_are_accepted_and_round_trip(
    user: str, eid: str, sid: str, at: datetime, speaker: int, extra: Any
) -> None:
    event = SessionStarted(
        event_id=eid, occurred_at=at, user_id=user, session_id=sid, speaker_id=speaker
    )
    wire = orjson.loads(event.to_json())
    wire["unknown_future_field"] = extra  # forward compatibility
    decoded = decode_event(orjson.dumps(wire), topic="session-events", max_bytes=100_000)
    assert decoded == event


@given(st.text(max_size=200))
def test_ids_with_key_breaking_characters_are_rejected(suffix: str) -> None:
    for bad in (f"a:{suffix}", f"{{{suffix}", f"{suffix}}}", f"a {suffix}", "x" * 129 + suffix):
        obj = {
            "event_id": str(uuid.uuid4()),
            "type": "user.login",
            "user_id": bad,
            "occurred_at": "2025-01-30T10:30:00Z",
        }
        assert isinstance(decode_event(orjson.dumps(obj), topic=None, max_bytes=10_000), Rejection)


def session_events(draw: st.DrawFn) -> list[SessionEvent]:
    users = [f"u{i}" for i in range(3)]
    sessions = [str(uuid.uuid4()) for _ in range(4)]
    t0 = datetime(2025, 1, 30, 10, tzinfo=UTC)
    out: list[SessionEvent] = []
    for step in range(draw(st.integers(1, 40))):
        at = t0 + timedelta(minutes=draw(st.integers(0, 90)))
        common: dict[str, Any] = {
            "event_id": str(uuid.uuid4()),
            "occurred_at": at,
            "user_id": draw(st.sampled_from(users)),
        }
        sid = draw(st.sampled_from(sessions))
        kind = draw(st.sampled_from(["login", "start", "update", "activity", "end"]))
        if kind == "login":
            out.append(UserLogin(**common, preferences={"step": step}))
        elif kind == "start":
            out.append(SessionStarted(**common, session_id=sid, speaker_id=step))
        elif kind == "update":
            out.append(
                SessionUpdated(
                    **common, session_id=sid, status=draw(st.sampled_from(["active", "paused"]))
                )
            )
        elif kind == "activity":
            out.append(SessionActivity(**common, session_id=sid))
        else:
            out.append(SessionEnded(**common, session_id=sid))
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_session_reducer_invariants(data: st.DataObject) -> None:
    events = session_events(data.draw)
    changes = reduce_session_events(events, {}, {}, UTC_TZ)
    started = [e for e in events if isinstance(e, SessionStarted)]
    first_starts = {e.session_id for e in started}
    # A session is counted once, by the first session.started; repeats are rejected.
    assert sum(changes.day_counters.values()) == len(first_starts)
    assert sum(n for (_, name), n in changes.day_counters.items() if name == SESSIONS_STARTED) == (
        len(first_starts)
    )
    assert set(changes.sessions) == first_starts
    for user in changes.users.values():
        current = user.current_session_id
        if current is not None:  # the current session is open and belongs to the user
            assert changes.sessions[current].user_id == user.user_id
            assert changes.sessions[current].is_open
    # Replaying the same events on the result changes no counter (they are not new there,
    # and the pipeline never feeds them again; reducing the same list twice must not crash).
    again = reduce_session_events(events, changes.sessions, changes.users, UTC_TZ)
    assert sum(n for (_, name), n in again.day_counters.items() if name == SESSIONS_STARTED) == 0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 10_000)), max_size=30))
def test_cache_reducer_counts_every_event_once(calls: list[tuple[bool, float]]) -> None:
    from schemas.events import AiResponse

    events: list[Event] = [
        AiResponse(
            event_id=str(uuid.uuid4()),
            occurred_at=datetime(2025, 1, 30, tzinfo=UTC),
            user_id="u",
            session_id=str(uuid.uuid4()),
            prompt="p",
            response="r",
            provider="g",
            model="m",
            latency_ms=lat,
            cache_hit=hit,
        )
        for hit, lat in calls
    ]
    changes = reduce_cache_events(events, UTC_TZ)
    hits = sum(n for (_, name), n in changes.day_counters.items() if name == "ai_hits")
    misses = sum(n for (_, name), n in changes.day_counters.items() if name == "ai_misses")
    assert (hits, misses) == (sum(h for h, _ in calls), sum(not h for h, _ in calls))
    assert len(changes.ai) == len(calls)


def test_fuzz_the_decoder_with_mutated_valid_events() -> None:
    """20 000 byte-level mutations of valid events of every type: never a crash."""
    rng = random.Random(2025)
    seeds = [valid_wire(kind) for kind in TOPIC_OF_TYPE]
    accepted = rejected = 0
    for _ in range(20_000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(raw))
            if op < 0.4:
                raw[pos] = rng.randrange(256)
            elif op < 0.7:
                del raw[pos]
            else:
                raw.insert(pos, rng.choice(b'{}[]":,\\0 -9azZ\x00\xff'))
        result = decode_event(bytes(raw), topic=None, max_bytes=100_000)
        if isinstance(result, Rejection):
            rejected += 1
            assert result.detail
        else:
            accepted += 1
    assert rejected > 10_000 and accepted > 0


def valid_wire(kind: str) -> bytes:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "user_id": "user123",
        "occurred_at": "2025-01-30T10:30:00Z",
        "session_id": str(uuid.uuid4()),
        "speaker_id": 6,
        "prompt": "p",
        "response": "r",
        "provider": "g",
        "model": "m",
        "latency_ms": 12.5,
        "error": "e",
        "text": "t",
        "audio": "UklGRg==",
        "status": "paused",
        "reason": "bye",
    }
    return orjson.dumps(base)
