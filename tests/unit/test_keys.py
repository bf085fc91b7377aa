"""Key formats, H() and TTLs of SPEC §4."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from schemas import H
from schemas.keys import (
    AI_RESPONSE_TTL,
    METRICS_TTL,
    SESSION_TTL,
    STATS_TTL,
    USER_STATE_TTL,
    VOICE_TTL,
    ai_response_key,
    format_utc,
    metrics_key,
    session_key,
    stats_key,
    topic_name,
    user_state_key,
    voice_key,
)


def test_h_is_first_32_hex_of_sha256() -> None:
    # sha256("hello") = 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
    assert H("hello") == "2cf24dba5fb0a30e26e83b2ac5b9e29e"
    assert len(H("こんにちは")) == 32


def test_key_formats() -> None:
    assert session_key("550e8400-e29b-41d4-a716-446655440000") == (
        "session:550e8400-e29b-41d4-a716-446655440000"
    )
    assert user_state_key("user123") == "user:user123:state"
    assert ai_response_key("hello") == f"ai_response:{H('hello')}"
    assert voice_key(6, "hello") == f"voice:6:{H('hello')}"
    assert metrics_key("response_time", "1h") == "metrics:response_time:1h"
    assert stats_key(date(2025, 1, 30)) == "stats:realtime:2025-01-30"
    assert topic_name("roleplay.", "session-events") == "roleplay.session-events"


def test_ttls() -> None:
    assert SESSION_TTL == timedelta(minutes=30)
    assert USER_STATE_TTL == timedelta(hours=1)
    assert AI_RESPONSE_TTL == timedelta(hours=1)
    assert VOICE_TTL == timedelta(hours=24)
    assert METRICS_TTL == timedelta(minutes=5)
    assert STATS_TTL == timedelta(hours=24)


def test_format_utc_uses_z() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert format_utc(datetime(2025, 1, 30, 19, 30, tzinfo=tokyo)) == "2025-01-30T10:30:00Z"
    assert format_utc(datetime(2025, 1, 30, 10, 30, 0, 5000, tzinfo=UTC)) == (
        "2025-01-30T10:30:00.005000Z"
    )
