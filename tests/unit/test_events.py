"""Validation of SPEC §3: every rule, with good and bad input."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.events import (
    MAX_JSON_DEPTH,
    AiResponse,
    Rejection,
    RejectReason,
    SessionStarted,
    UserLogin,
    VoiceSynthesized,
    decode_event,
)

SID = "550e8400-e29b-41d4-a716-446655440000"


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2025-01-30T10:30:00Z",
        "user_id": "user123",
        "session_id": SID,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def decode(obj: Any, topic: str | None = None, max_bytes: int = 100_000) -> Any:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return decode_event(raw, topic=topic, max_bytes=max_bytes)


GOOD = [
    event(type="user.login"),
    event(type="user.login", session_id=..., preferences={"voice": "soft"}),
    event(type="session.started", speaker_id=6),
    event(type="session.started", speaker_id=0, conversation_context={}, scenario_id="cafe-1"),
    event(type="session.updated"),
    event(type="session.updated", status="paused", speaker_id=3, performance_stats={"a": 1}),
    event(type="session.activity"),
    event(type="session.ended", reason="user_left"),
    event(type="ai.response", prompt="p", response="r", provider="groq", model="m", latency_ms=12),
    event(
        type="ai.response",
        prompt="",
        response="",
        provider="g",
        model="m",
        latency_ms=0.5,
        cache_hit=True,
    ),
    event(type="ai.failed", provider="g", model="m", error="timeout", latency_ms=3000),
    event(type="voice.synthesized", speaker_id=6, text="hi", audio="UklGRg==", latency_ms=80),
    event(type="voice.failed", speaker_id=6, text="hi", error="busy", latency_ms=1),
    event(type="session.started", speaker_id=1, occurred_at="2025-01-30T19:30:00.123456789+09:00"),
    event(type="session.started", speaker_id=1, occurred_at="2025-01-30t10:30:00z"),
    event(type="session.started", speaker_id=1, future_field={"x": 1}),
]


@pytest.mark.parametrize("obj", GOOD, ids=lambda o: o["type"])
def test_valid_events_are_accepted(obj: dict[str, Any]) -> None:
    result = decode(obj)
    assert not isinstance(result, Rejection), result
    assert result.type == obj["type"]


BAD: list[tuple[str, Any, RejectReason, str]] = [
    ("not json", b"{nope", RejectReason.INVALID_JSON, "JSON"),
    ("not utf-8", b'{"a": "\xff"}', RejectReason.INVALID_JSON, "JSON"),
    ("array", b"[1, 2]", RejectReason.NOT_AN_OBJECT, "list"),
    ("no type", event(), RejectReason.UNKNOWN_TYPE, "None"),
    ("unknown type", event(type="session.exploded"), RejectReason.UNKNOWN_TYPE, "exploded"),
    ("type not a string", event(type=7), RejectReason.UNKNOWN_TYPE, "7"),
    (
        "missing event_id",
        event(type="user.login", event_id=...),
        RejectReason.INVALID_FIELDS,
        "event_id: Field required",
    ),
    (
        "event_id not uuid",
        event(type="user.login", event_id="abc"),
        RejectReason.INVALID_FIELDS,
        "event_id",
    ),
    (
        "missing occurred_at",
        event(type="user.login", occurred_at=...),
        RejectReason.INVALID_FIELDS,
        "occurred_at",
    ),
    (
        "timestamp without offset",
        event(type="user.login", occurred_at="2025-01-30T10:30:00"),
        RejectReason.INVALID_FIELDS,
        "offset",
    ),
    (
        "date only",
        event(type="user.login", occurred_at="2025-01-30"),
        RejectReason.INVALID_FIELDS,
        "occurred_at",
    ),
    (
        "timestamp as number",
        event(type="user.login", occurred_at=1738232400),
        RejectReason.INVALID_FIELDS,
        "occurred_at",
    ),
    (
        "year 9999",
        event(type="user.login", occurred_at="9999-12-31T23:50:00Z"),
        RejectReason.INVALID_FIELDS,
        "1970",
    ),
    (
        "hour 24",
        event(type="user.login", occurred_at="2025-01-30T24:00:00Z"),
        RejectReason.INVALID_FIELDS,
        "each field in range",
    ),
    (
        "leap second",
        event(type="user.login", occurred_at="2016-12-31T23:59:60Z"),
        RejectReason.INVALID_FIELDS,
        "each field in range",
    ),
    (
        "month 13",
        event(type="user.login", occurred_at="2025-13-01T10:30:00Z"),
        RejectReason.INVALID_FIELDS,
        "each field in range",
    ),
    (
        "offset of 24 h",
        event(type="user.login", occurred_at="2025-01-30T10:30:00+24:00"),
        RejectReason.INVALID_FIELDS,
        "each field in range",
    ),
    (
        "year 0001 at +14:00",
        event(type="user.login", occurred_at="0001-01-01T00:00:00+14:00"),
        RejectReason.INVALID_FIELDS,
        "occurred_at",
    ),
    (
        "impossible date",
        event(type="user.login", occurred_at="2025-02-30T10:30:00Z"),
        RejectReason.INVALID_FIELDS,
        "occurred_at",
    ),
    (
        "missing user_id",
        event(type="user.login", user_id=...),
        RejectReason.INVALID_FIELDS,
        "user_id",
    ),
    (
        "user_id with colon",
        event(type="user.login", user_id="a:b"),
        RejectReason.INVALID_FIELDS,
        "user_id",
    ),
    (
        "user_id with braces",
        event(type="user.login", user_id="{a}"),
        RejectReason.INVALID_FIELDS,
        "user_id",
    ),
    (
        "user_id with space",
        event(type="user.login", user_id="a b"),
        RejectReason.INVALID_FIELDS,
        "user_id",
    ),
    (
        "user_id too long",
        event(type="user.login", user_id="a" * 129),
        RejectReason.INVALID_FIELDS,
        "user_id",
    ),
    ("user_id empty", event(type="user.login", user_id=""), RejectReason.INVALID_FIELDS, "user_id"),
    ("user_id number", event(type="user.login", user_id=5), RejectReason.INVALID_FIELDS, "user_id"),
    (
        "session_id missing",
        event(type="session.activity", session_id=...),
        RejectReason.INVALID_FIELDS,
        "session_id",
    ),
    (
        "session_id not uuid",
        event(type="session.activity", session_id="s1:x"),
        RejectReason.INVALID_FIELDS,
        "session_id",
    ),
    (
        "speaker_id missing",
        event(type="session.started"),
        RejectReason.INVALID_FIELDS,
        "speaker_id",
    ),
    (
        "speaker_id string",
        event(type="session.started", speaker_id="6"),
        RejectReason.INVALID_FIELDS,
        "speaker_id",
    ),
    (
        "speaker_id negative",
        event(type="session.started", speaker_id=-1),
        RejectReason.INVALID_FIELDS,
        "speaker_id",
    ),
    (
        "speaker_id bool",
        event(type="session.started", speaker_id=True),
        RejectReason.INVALID_FIELDS,
        "speaker_id",
    ),
    (
        "speaker_id float",
        event(type="session.started", speaker_id=6.5),
        RejectReason.INVALID_FIELDS,
        "speaker_id",
    ),
    (
        "context not object",
        event(type="session.started", speaker_id=1, conversation_context="{}"),
        RejectReason.INVALID_FIELDS,
        "conversation_context",
    ),
    (
        "scenario_id with colon",
        event(type="session.started", speaker_id=1, scenario_id="a:b"),
        RejectReason.INVALID_FIELDS,
        "scenario_id",
    ),
    (
        "status unknown",
        event(type="session.updated", status="ended"),
        RejectReason.INVALID_FIELDS,
        "status",
    ),
    (
        "preferences list",
        event(type="user.login", preferences=[1]),
        RejectReason.INVALID_FIELDS,
        "preferences",
    ),
    ("reason number", event(type="session.ended", reason=3), RejectReason.INVALID_FIELDS, "reason"),
    (
        "latency negative",
        event(type="ai.response", prompt="p", response="r", provider="g", model="m", latency_ms=-1),
        RejectReason.INVALID_FIELDS,
        "latency_ms",
    ),
    (
        "latency string",
        event(type="ai.failed", provider="g", model="m", error="e", latency_ms="5"),
        RejectReason.INVALID_FIELDS,
        "latency_ms",
    ),
    (
        "cache_hit string",
        event(
            type="ai.response",
            prompt="p",
            response="r",
            provider="g",
            model="m",
            latency_ms=1,
            cache_hit="yes",
        ),
        RejectReason.INVALID_FIELDS,
        "cache_hit",
    ),
    (
        "prompt missing",
        event(type="ai.response", response="r", provider="g", model="m", latency_ms=1),
        RejectReason.INVALID_FIELDS,
        "prompt",
    ),
    (
        "audio not base64",
        event(type="voice.synthesized", speaker_id=1, text="t", audio="not base64!", latency_ms=1),
        RejectReason.INVALID_FIELDS,
        "audio",
    ),
    (
        "audio empty (a miss would cache an empty clip, served as a hit)",
        event(type="voice.synthesized", speaker_id=1, text="t", audio="", latency_ms=1),
        RejectReason.INVALID_FIELDS,
        "audio",
    ),
    (
        "NUL in a string",
        event(type="user.login", preferences={"k": "a\x00b"}),
        RejectReason.NUL_CHARACTER,
        "U+0000",
    ),
    (
        "NUL in a voice text beside its audio",
        event(
            type="voice.synthesized",
            speaker_id=1,
            text="say\x00this",
            audio="UklGRgAA" * 4000,
            latency_ms=1,
        ),
        RejectReason.NUL_CHARACTER,
        "U+0000",
    ),
    ("tombstone", None, RejectReason.INVALID_JSON, "empty"),
]


@pytest.mark.parametrize(("obj", "reason", "needle"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_events_are_rejected_with_reason(
    obj: Any, reason: RejectReason, needle: str
) -> None:
    result = decode_event(None, topic=None, max_bytes=1000) if obj is None else decode(obj)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert needle in result.detail


def test_size_limit_is_inclusive() -> None:
    raw = orjson.dumps(event(type="user.login", preferences={"pad": ""}))
    pad = 1000 - len(raw)
    exact = orjson.dumps(event(type="user.login", preferences={"pad": "x" * pad}))
    assert len(exact) == 1000
    assert not isinstance(decode(exact, max_bytes=1000), Rejection)
    over = decode(exact + b" ", max_bytes=1000)
    assert isinstance(over, Rejection) and over.reason == RejectReason.TOO_LARGE


def test_event_on_the_wrong_topic_is_rejected() -> None:
    result = decode(
        event(type="ai.failed", provider="g", model="m", error="e", latency_ms=1),
        topic="session-events",
    )
    assert isinstance(result, Rejection) and result.reason == RejectReason.WRONG_TOPIC


def test_ids_are_canonicalised_and_times_normalised_to_utc() -> None:
    obj = event(
        type="session.started",
        speaker_id=1,
        event_id=SID.upper(),
        occurred_at="2025-01-30T19:30:00+09:00",
    )
    result = decode(obj)
    assert isinstance(result, SessionStarted)
    assert result.event_id == SID
    assert result.occurred_at.isoformat() == "2025-01-30T10:30:00+00:00"


def test_unknown_fields_are_ignored_and_not_reemitted() -> None:
    result = decode(event(type="user.login", shiny_new_field=1))
    assert isinstance(result, UserLogin)
    assert b"shiny_new_field" not in result.to_json()


def test_wire_form_round_trips() -> None:
    audio = base64.b64encode(b"RIFF....WAVE").decode()
    for obj in (
        event(
            type="ai.response", prompt="p", response="r", provider="g", model="m", latency_ms=1.5
        ),
        event(type="voice.synthesized", speaker_id=2, text="t", audio=audio, latency_ms=3),
    ):
        first = decode(obj)
        assert isinstance(first, AiResponse | VoiceSynthesized)
        assert decode(first.to_json()) == first


def _ai(latency: object) -> dict[str, Any]:
    return event(
        type="ai.response", prompt="p", response="r", provider="g", model="m", latency_ms=latency
    )


NUMBERS = [
    # (case, event, None when accepted / the reason)
    ("latency 0", _ai(0), None),
    ("latency at the 24 h bound", _ai(86_400_000), None),
    ("latency just past the bound", _ai(86_400_000.001), RejectReason.OUT_OF_RANGE),
    ("nanoseconds sent as ms", _ai(1.7e18), RejectReason.OUT_OF_RANGE),
    ("latency that filled a bigint sum", _ai(9223372036854774), RejectReason.OUT_OF_RANGE),
    ("latency 1e308", _ai(1e308), RejectReason.OUT_OF_RANGE),
    ("negative latency", _ai(-1), RejectReason.INVALID_FIELDS),
    ("speaker at int32 max", event(type="session.started", speaker_id=2**31 - 1), None),
    ("speaker past int32", event(type="session.started", speaker_id=2**31), RejectReason.OUT_OF_RANGE),
    ("speaker past u64", b'{"type":"session.started","speaker_id":18446744073709551616,'
     b'"event_id":"550e8400-e29b-41d4-a716-446655440001","occurred_at":"2025-01-30T10:30:00Z",'
     b'"user_id":"u","session_id":"550e8400-e29b-41d4-a716-446655440000"}', RejectReason.OUT_OF_RANGE),
    ("speaker past int32 and a bad field", event(type="session.started", speaker_id=2**31, user_id="a b"),
     RejectReason.INVALID_FIELDS),
    ("huge number inside an object", orjson.dumps(event(type="session.activity", performance_stats={"n": 1}))
     .replace(b'"n":1', b'"n":1000000000000000000000000000000'), None),
    ("number past a double inside an object", b'{"type":"session.activity","performance_stats":{"n":1e400}}',
     RejectReason.INVALID_JSON),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "reason"), [n[1:] for n in NUMBERS], ids=[n[0] for n in NUMBERS])
def test_numbers_are_accepted_or_rejected_with_their_own_reason(
    obj: Any, reason: RejectReason | None
) -> None:
    """Every number SPEC §3 accepts is stored; rpcache's bounds have the reason out_of_range."""
    result = decode(obj)
    if reason is None:
        assert not isinstance(result, Rejection), result
        assert orjson.loads(result.stored_json())  # storable as JSON
    else:
        assert isinstance(result, Rejection)
        assert result.reason == reason, result


@pytest.mark.parametrize(
    ("occurred_at", "accepted"),
    [
        ("2025-01-30T10:30:00Z", True),  # the past is fine
        ("2025-01-30T10:35:00Z", True),  # exactly at the tolerance
        ("2025-01-30T10:35:00.000001Z", False),
        ("2025-01-30T19:35:00+09:00", True),  # the same instant in another offset
        ("2027-03-05T10:30:00Z", False),  # 400 days ahead
    ],
)
def test_occurred_at_past_the_clock_skew_is_rejected(occurred_at: str, accepted: bool) -> None:
    now = datetime(2025, 1, 30, 10, 30, tzinfo=UTC)
    raw = orjson.dumps(event(type="session.started", speaker_id=1, occurred_at=occurred_at))
    result = decode_event(raw, topic=None, max_bytes=10_000, not_after=now + timedelta(minutes=5))
    if accepted:
        assert not isinstance(result, Rejection), result
    else:
        assert isinstance(result, Rejection)
        assert result.reason == RejectReason.OCCURRED_IN_FUTURE
        assert "MAX_CLOCK_SKEW_S" in result.detail


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    # `\\u0000` on the wire is a backslash then "u0000": six characters, no NUL.
    result = decode(event(type="user.login", preferences={"k": "a\\u0000b"}))
    assert not isinstance(result, Rejection)
    assert result.preferences == {"k": "a\\u0000b"}


def test_a_hit_may_send_its_audio_empty() -> None:
    """A hit writes nothing, so its audio is not needed (the load generator sends none)."""
    raw = orjson.dumps(
        event(
            type="voice.synthesized", speaker_id=1, text="t", audio="", latency_ms=1, cache_hit=True
        )
    )
    assert isinstance(
        decode_event(raw, topic="synthesis-events", max_bytes=10**6), VoiceSynthesized
    )


def nested(depth: int) -> str:
    """A JSON object `depth` levels deep: {"a":{"a":…1…}}."""
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    ("field", "depth", "accepted"),
    [
        ("conversation_context", 1, True),
        ("conversation_context", MAX_JSON_DEPTH, True),
        ("conversation_context", MAX_JSON_DEPTH + 1, False),
        ("conversation_context", 300, False),  # orjson parses it, nobody could write it
        ("conversation_context", 1020, False),
        ("performance_stats", 600, False),
    ],
)
def test_json_fields_nest_at_most_max_depth(field: str, depth: int, accepted: bool) -> None:
    """Deeper than MAX_JSON_DEPTH is refused at validation, with a reason and no retry;
    anything accepted can be written to the event log and to Redis."""
    kind = "session.started" if field == "conversation_context" else "session.updated"
    head = orjson.dumps(event(type=kind, speaker_id=1))[:-1]
    raw = head + f',"{field}":{nested(depth)}}}'.encode()
    result = decode_event(raw, topic=None, max_bytes=1 << 20)
    if accepted:
        assert not isinstance(result, Rejection), result
        assert orjson.loads(result.stored_json())[field] == orjson.loads(nested(depth))
        orjson.dumps(getattr(result, field))  # what the Redis projection writes
    else:
        assert isinstance(result, Rejection)
        assert result.reason is RejectReason.INVALID_FIELDS
        assert f"{field} nests deeper than {MAX_JSON_DEPTH} levels" in result.detail


def test_many_shallow_objects_and_deep_unknown_fields_are_accepted() -> None:
    """Depth, not the number of objects: a long history of turns is fine, and a field
    the worker drops (unknown, SPEC §3) is not checked."""
    head = orjson.dumps(event(type="session.started", speaker_id=1))[:-1]
    turns = ",".join('{"role":"user","text":"hi"}' for _ in range(300))
    raw = head + f',"conversation_context":{{"turns":[{turns}]}},"later":{nested(300)}}}'.encode()
    result = decode_event(raw, topic=None, max_bytes=1 << 20)
    assert isinstance(result, SessionStarted), result
    assert len(result.conversation_context["turns"]) == 300
