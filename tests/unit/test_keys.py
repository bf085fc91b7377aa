"""Key formats, H() and TTLs of SPEC §4."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

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


def _reference_format_utc(moment: datetime) -> str:
    """format_utc's definition, before orjson wrote it (schemas/keys.py)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


FORMAT_UTC_CASES = [
    datetime(2025, 1, 30, 10, 30, tzinfo=UTC),
    datetime(2025, 1, 30, 10, 30, 0, 1, tzinfo=UTC),
    datetime(2025, 1, 30, 10, 30, 0, 999_999, tzinfo=UTC),
    datetime(2025, 1, 30, 10, 30, 0, 120_000, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(1, 1, 1, 12, tzinfo=UTC),
    datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 2, 29, 8, 0, tzinfo=timezone(timedelta(hours=9))),
    datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    datetime(2024, 1, 1, tzinfo=timezone(timedelta(0))),
    datetime(2024, 3, 31, 2, 30, tzinfo=ZoneInfo("Europe/Berlin")),
    datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Berlin")),
    datetime(2025, 6, 1, 12, tzinfo=ZoneInfo("Asia/Tokyo")),
    datetime(2025, 6, 1, 12, 0, 0, 123_456),  # naive: local time, like astimezone
]


@pytest.mark.parametrize("moment", FORMAT_UTC_CASES, ids=str)
def test_format_utc_matches_its_definition(moment: datetime) -> None:
    assert format_utc(moment) == _reference_format_utc(moment)


def test_format_utc_matches_its_definition_on_random_moments() -> None:
    rng = random.Random(15)
    zones = [UTC, timezone(timedelta(hours=5, minutes=45)), ZoneInfo("America/New_York")]
    for _ in range(20_000):
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=rng.randrange(0, 32_000_000_000),
            microseconds=rng.choice([0, rng.randrange(1_000_000)]),
        )
        moment = moment.astimezone(rng.choice(zones))
        assert format_utc(moment) == _reference_format_utc(moment), moment


def test_format_utc_uses_z() -> None:
    tokyo = timezone(timedelta(hours=9))
    assert format_utc(datetime(2025, 1, 30, 19, 30, tzinfo=tokyo)) == "2025-01-30T10:30:00Z"
    assert format_utc(datetime(2025, 1, 30, 10, 30, 0, 5000, tzinfo=UTC)) == (
        "2025-01-30T10:30:00.005000Z"
    )
