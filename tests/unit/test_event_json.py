"""An event's JSON bytes never change: the event log's payload_sha depends on them.

`_Event.to_json` is written by pydantic-core's serializer; the event log has
always kept `orjson.dumps(event.model_dump(mode="json", exclude_none=True))`.
A redelivered event whose bytes differed would be dead-lettered as a
conflict, so the two must agree on every event, whatever its strings, numbers
and JSON objects hold.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import MAX_LATENCY_MS, Rejection, decode_event

_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))
_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_objects = st.dictionaries(_text, _json, max_size=5)
_latency = st.floats(0, MAX_LATENCY_MS, allow_nan=False)
_times = st.sampled_from(
    ["2026-12-05T12:00:00Z", "2026-12-05T21:00:00.123456789+09:00", "1999-01-01t00:00:00.5z"]
)


def _orjson_form(raw: dict[str, Any]) -> tuple[bytes, bytes]:
    event = decode_event(orjson.dumps(raw), topic=None, max_bytes=10_000_000)
    assert not isinstance(event, Rejection), event
    return event.to_json(), orjson.dumps(event.model_dump(mode="json", exclude_none=True))


@given(_objects, _objects, _times, st.integers(0, 2**31 - 1))
def test_session_events_keep_their_bytes(
    context: dict[str, Any], stats: dict[str, Any], at: str, speaker: int
) -> None:
    raw = {
        "type": "session.updated",
        "event_id": str(uuid.uuid4()).upper(),
        "occurred_at": at,
        "user_id": "u-1",
        "session_id": str(uuid.uuid4()),
        "speaker_id": speaker,
        "conversation_context": context,
        "performance_stats": stats,
        "unknown": [1, 2],
    }
    ours, reference = _orjson_form(raw)
    assert ours == reference


@given(_text, _text, _text, _latency, st.booleans())
def test_inference_events_keep_their_bytes(
    prompt: str, response: str, model: str, latency: float, hit: bool
) -> None:
    raw = {
        "type": "ai.response",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-12-05T12:00:00Z",
        "user_id": "u-1",
        "session_id": str(uuid.uuid4()),
        "prompt": prompt,
        "response": response,
        "provider": "groq",
        "model": model,
        "latency_ms": latency,
        "cache_hit": hit,
    }
    ours, reference = _orjson_form(raw)
    assert ours == reference


@given(_objects | st.none())
def test_optional_fields_left_out_when_unset(preferences: dict[str, Any] | None) -> None:
    raw = {
        "type": "user.login",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-12-05T12:00:00Z",
        "user_id": "u-1",
        "preferences": preferences,
    }
    ours, reference = _orjson_form(raw)
    assert ours == reference
    assert (b'"preferences"' in ours) == (preferences is not None)
