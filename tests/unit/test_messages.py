"""The dead-letter and alert messages: built through their models, stable ids, wire fields."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.messages import (
    DEAD_LETTER_ID_NAMESPACE,
    KAFKA_KEY_LIMIT,
    KAFKA_ORIGINAL_LIMIT,
    TEXT_LIMIT,
    AlertMessage,
    DeadLetterMessage,
    dead_letter_id,
)
from streams.observe.alerts import Alert
from streams.store.base import StoredDeadLetter
from streams.write.deadletters import dead_letter_message, message_key, stored_text

AT = datetime(2025, 1, 30, 10, 30, 0, 123456, tzinfo=UTC)


def row(**changes: Any) -> StoredDeadLetter:
    """A dead_letters row as the store returns it."""
    base: dict[str, Any] = {
        "id": 7,
        "topic": "roleplay.session-events",
        "kafka_partition": 3,
        "kafka_offset": 42,
        "message_key": b"user123",
        "reason": "invalid_json",
        "detail": "not UTF-8 JSON: unexpected end of data",
        "event_id": None,
        "original": b'{"type": "user.login", ',
        "created_at": AT,
    }
    return StoredDeadLetter(**(base | changes))


def test_dead_letter_id_is_fixed_forever() -> None:
    """Consumers dedupe on it across releases: the namespace and the name never change."""
    assert dead_letter_id("roleplay.session-events", 3, 42, "invalid_json") == (
        "a1923ce2-9be4-5af4-aaa8-361b96e56708"
    )
    assert DEAD_LETTER_ID_NAMESPACE == uuid.UUID("2904e525-f308-4d91-b936-502d96f7f8bb")
    assert dead_letter_id("t", 0, 1, "r") == str(uuid.uuid5(DEAD_LETTER_ID_NAMESPACE, "t/0/1/r"))


def test_dead_letter_id_depends_on_each_part_of_the_row_key() -> None:
    ids = {
        dead_letter_id("roleplay.session-events", 3, 42, "invalid_json"),
        dead_letter_id("roleplay.inference-events", 3, 42, "invalid_json"),
        dead_letter_id("roleplay.session-events", 2, 42, "invalid_json"),
        dead_letter_id("roleplay.session-events", 3, 43, "invalid_json"),
        dead_letter_id("roleplay.session-events", 3, 42, "unknown_session"),
        dead_letter_id("roleplay.session-events", 34, 2, "invalid_json"),
    }
    assert len(ids) == 6
    assert uuid.UUID(next(iter(ids))).version == 5


def test_the_same_row_gives_the_same_message() -> None:
    """A republish after a crash, or a redelivery that hits the same row: same id, same bytes."""
    first = dead_letter_message(row()).to_json()
    again = dead_letter_message(row(id=8, message_key=b"user123")).to_json()
    assert first == again
    other = orjson.loads(dead_letter_message(row(reason="unknown_session")).to_json())
    assert other["dead_letter_id"] != orjson.loads(first)["dead_letter_id"]


def test_dead_letter_wire_fields() -> None:
    msg = orjson.loads(dead_letter_message(row(event_id="not-a-uuid")).to_json())
    assert msg == {
        "dead_letter_id": "a1923ce2-9be4-5af4-aaa8-361b96e56708",
        "reason": "invalid_json",
        "detail": "not UTF-8 JSON: unexpected end of data",
        "source_topic": "roleplay.session-events",
        "partition": 3,
        "offset": 42,
        "event_id": "not-a-uuid",
        "key": "user123",
        "key_size": 7,
        "original": base64.b64encode(b'{"type": "user.login", ').decode(),
        "original_size": 23,
        "original_truncated": False,
        "dead_lettered_at": "2025-01-30T10:30:00.123456Z",
    }


@pytest.mark.parametrize(
    ("original", "key", "want_key", "size", "truncated"),
    [
        (None, None, None, 0, False),  # a tombstone without a key
        (b"x" * KAFKA_ORIGINAL_LIMIT, b"\xff\xfe", "\ufffd\ufffd", KAFKA_ORIGINAL_LIMIT, False),
        (b"y" * (KAFKA_ORIGINAL_LIMIT + 1), b"k", "k", KAFKA_ORIGINAL_LIMIT + 1, True),
    ],
)
def test_dead_letter_original_and_key(
    original: bytes | None, key: bytes | None, want_key: str | None, size: int, truncated: bool
) -> None:
    msg = dead_letter_message(row(original=original, message_key=key))
    assert msg.key == want_key
    assert msg.original_size == size and msg.original_truncated is truncated
    assert base64.b64decode(msg.original) == (original or b"")[:KAFKA_ORIGINAL_LIMIT]


@pytest.mark.parametrize(
    ("key", "event_id", "detail"),
    [
        (b"\x01" * 1_000_000, None, "x"),  # a control-byte key: 6 bytes of JSON each
        (b"k" * 5_000_000, None, "x"),
        (b"user123", "e" * 1_000_000, "x"),  # an event_id near the value's limit
        (b"user123", "\x00" * 300_000, "d" * 2_000_000),
        (b"\xff" * 100_000, "\u2028" * 50_000, "\x1f" * 50_000),
    ],
    ids=["control-key", "long-key", "long-event-id", "nul-event-id", "mixed"],
)
def test_a_dead_letter_message_stays_under_kafkas_default_message_size(
    key: bytes, event_id: str | None, detail: str
) -> None:
    """Whatever the original was, the message fits Kafka's default `message.max.bytes`
    (1 MB): a broker that refused it would refuse it on every flush, and every later
    dead letter would wait behind it."""
    stored = row(
        message_key=key,
        event_id=event_id,
        detail=detail,
        original=b"o" * (3 * KAFKA_ORIGINAL_LIMIT),
    )
    msg = dead_letter_message(stored)
    kafka_key = message_key(stored)
    assert kafka_key is not None and len(kafka_key) <= KAFKA_KEY_LIMIT
    assert kafka_key == key[:KAFKA_KEY_LIMIT]  # the original key's start: same partition
    assert len(msg.to_json()) + len(kafka_key) < 1_000_000
    assert msg.key_size == len(key)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("4b2c…", "4b2c…"),
        ("\x00abc", "\ufffdabc"),  # PostgreSQL's text refuses U+0000
        ("a\ud800b", "a?b"),  # a lone surrogate is not UTF-8
        ("x" * (TEXT_LIMIT + 5), "x" * TEXT_LIMIT),
        ("日本語\U0001f600", "日本語\U0001f600"),
    ],
)
def test_a_dead_letters_own_text_is_what_postgresql_can_store(text: str, stored: str) -> None:
    assert stored_text(text) == stored
    stored_text(text).encode("utf-8")  # never raises


def test_consumers_can_parse_with_the_models() -> None:
    msg = dead_letter_message(row())
    assert DeadLetterMessage.model_validate_json(msg.to_json()) == msg
    later = orjson.loads(msg.to_json()) | {"a_field_added_later": 1}
    assert DeadLetterMessage.model_validate(later) == msg
    alert = Alert("redis_memory_high", "firing", "CRITICAL", "redis_memory_ratio", 0.93, 0.9, AT)
    assert AlertMessage.model_validate_json(alert.to_json()) == alert.message()


def test_alert_is_published_through_its_model() -> None:
    alert = Alert("redis_rebuild", "resolved", "WARNING", "redis_keys_rebuilt", 1200, 0.0, AT)
    assert orjson.loads(alert.to_json()) == {
        "rule": "redis_rebuild",
        "state": "resolved",
        "level": "WARNING",
        "metric": "redis_keys_rebuilt",
        "value": 1200.0,
        "threshold": 0.0,
        "time": "2025-01-30T10:30:00.123456Z",
    }
    with pytest.raises(ValueError, match="finite"):
        Alert("x", "firing", "WARNING", "m", float("nan"), 1.0, AT).to_json()
