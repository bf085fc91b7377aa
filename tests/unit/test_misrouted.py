"""Events keyed other than by their user_id (`streams.write.pipeline.misrouted`)."""

from __future__ import annotations

import uuid

import orjson
import pytest

from schemas.events import Event, decode_event
from streams.store.base import StoredEvent
from streams.write.pipeline import misrouted


def stored(user_id: str, key: bytes | None) -> StoredEvent:
    raw = orjson.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "user.login",
            "occurred_at": "2025-01-30T10:30:00Z",
            "user_id": user_id,
        }
    )
    event = decode_event(raw, topic="session-events", max_bytes=1 << 20)
    assert isinstance(event, Event)
    return StoredEvent(event, "roleplay.session-events", 0, 1, event.stored_json(), key, raw)


@pytest.mark.parametrize(
    ("user_id", "key", "is_misrouted"),
    [
        ("user123", b"user123", False),
        ("user.name@x-1_", b"user.name@x-1_", False),  # every character SPEC §3 allows
        ("user123", None, True),  # no key: round-robin partitions
        ("user123", b"user999", True),
        ("user123", b"USER123", True),  # keys are bytes: case matters to the partitioner
        ("user123", b"user123 ", True),
        ("user123", b"", True),
    ],
)
def test_an_event_is_misrouted_unless_keyed_by_its_user_id(
    user_id: str, key: bytes | None, is_misrouted: bool
) -> None:
    event = stored(user_id, key)
    assert misrouted([event]) == ([event] if is_misrouted else [])
