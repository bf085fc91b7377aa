"""Projections: the absolute Redis value and expiry of each key."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from schemas.keys import epoch_ms, format_utc
from streams.model import CachedVoiceClip, SessionState, UserState
from streams.projections import (
    Delete,
    HashWrite,
    expiry,
    project_session,
    project_stats,
    project_user,
    project_voice,
)
from streams.write.handlers.stats import (
    StatsProjector,
    Written,
    days_to_write,
    overwritten,
    recent_days,
)

T0 = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
SID = "550e8400-e29b-41d4-a716-446655440000"


def session(**kw: object) -> SessionState:
    base: dict[str, object] = dict(
        session_id=SID,
        user_id="u1",
        status="active",
        speaker_id=6,
        scenario_id=None,
        conversation_context={"scene": "cafe"},
        performance_stats=None,
        started_at=T0,
        business_day=date(2025, 1, 30),
        last_activity=T0 + timedelta(minutes=5),
    )
    base.update(kw)
    return SessionState(**base)  # type: ignore[arg-type]


def test_open_session_hash_and_expiry() -> None:
    op = project_session(session(), now=T0 + timedelta(minutes=6))
    assert op == HashWrite(
        f"session:{SID}",
        {
            "user_id": "u1",
            "status": "active",
            "speaker_id": "6",
            "conversation_context": '{"scene":"cafe"}',
            "last_activity": "2025-01-30T10:05:00Z",
            "performance_stats": "{}",
        },
        epoch_ms(T0 + timedelta(minutes=35)),
    )


def test_closed_or_idle_session_is_deleted() -> None:
    assert project_session(session(status="ended"), T0) == Delete(f"session:{SID}")
    assert project_session(session(status="expired"), T0) == Delete(f"session:{SID}")
    assert project_session(session(), T0 + timedelta(minutes=35)) == Delete(f"session:{SID}")


def test_user_state_fields_quota_and_ttl() -> None:
    user = UserState("u1", SID, T0, {"lang": "ja"}, last_seen=T0 + timedelta(minutes=10))
    op = project_user(user, sessions_today=3, quota=50, now=T0 + timedelta(minutes=10))
    assert op == HashWrite(
        "user:u1:state",
        {
            "current_session_id": SID,
            "last_login": "2025-01-30T10:00:00Z",
            "preferences": '{"lang":"ja"}',
            "daily_session_count": "3",
            "remaining_sessions": "47",
        },
        epoch_ms(T0 + timedelta(minutes=70)),
    )


def test_remaining_sessions_never_negative_and_empty_fields() -> None:
    user = UserState("u1", None, None, None, last_seen=T0)
    op = project_user(user, sessions_today=60, quota=50, now=T0)
    assert isinstance(op, HashWrite)
    assert op.fields["remaining_sessions"] == "0"
    assert op.fields["current_session_id"] == "" and op.fields["last_login"] == ""


def test_stats_ttl_is_24h_after_the_write() -> None:
    op = project_stats(
        date(2025, 1, 30), {"active_sessions": 2, "total_sessions_today": 5}, written_at=T0, now=T0
    )
    assert op == HashWrite(
        "stats:realtime:2025-01-30",
        {"active_sessions": "2", "total_sessions_today": "5"},
        epoch_ms(T0 + timedelta(hours=24)),
    )


# --- the stats writer -----------------------------------------------------------------
def test_stats_days_written_on_change_or_when_due_a_refresh() -> None:
    d1, d2, d3 = date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)
    current = {d1: {"total_sessions_today": 3}, d2: {"total_sessions_today": 5}, d3: {"x": 1}}
    written = {
        d1: Written({"total_sessions_today": 3}, at=100.0),  # same, written 10 s ago
        d2: Written({"total_sessions_today": 4}, at=109.0),  # changed since
    }  # d3 never written
    assert days_to_write(current, written, now_mono=110.0, refresh_s=60.0) == [d2, d3]
    assert days_to_write(current, written, now_mono=160.0, refresh_s=60.0) == [d1, d2, d3]
    assert days_to_write({}, written, now_mono=500.0, refresh_s=60.0) == []


WRITTEN = Written({"active_sessions": 55, "system_load": 55 / 30}, at=100.0)
"""What the writer last wrote for a day; Redis holds it as `WRITTEN_TEXT`."""
WRITTEN_TEXT = {"active_sessions": "55", "system_load": "1.83333"}


@pytest.mark.parametrize(
    ("shown", "overwritten_since"),
    [
        (WRITTEN_TEXT, False),  # Redis holds our write
        ({**WRITTEN_TEXT, "active_sessions": "56"}, True),  # a replay's older figure
        ({**WRITTEN_TEXT, "system_load": "1.86667"}, True),
        ({"active_sessions": "55"}, True),  # a field gone
        ({**WRITTEN_TEXT, "extra": "1"}, False),  # another's field: an HSET leaves it anyway
        ({}, True),  # the key gone (FLUSHALL, DEL) or of another type
        (None, True),  # not read at all
    ],
)
def test_a_stats_hash_someone_else_wrote_since_is_written_again(
    shown: dict[str, str] | None, overwritten_since: bool
) -> None:
    day = date(2026, 11, 27)
    shown_by_day = {} if shown is None else {day: shown}
    assert overwritten({day: WRITTEN}, shown_by_day) == ([day] if overwritten_since else [])
    projector = StatsProjector(tz=ZoneInfo("UTC"), capacity=30)
    projector.remember({day: WRITTEN}, now_mono=100.0)
    projector.forget(overwritten(projector.written, shown_by_day))
    current = {day: dict(WRITTEN.fields)}  # the figures did not change since our write
    expected = [day] if overwritten_since else []
    assert days_to_write(current, projector.written, now_mono=101.0, refresh_s=60.0) == expected


@pytest.mark.parametrize(
    ("base_min", "ttl_min", "now_min", "want_min"),
    [
        (0, 30, 0, 30),  # an event of now: the spec's TTL
        (0, 30, 10, 30),  # an older event: TTL counted from the event
        (5, 30, 0, 30),  # stamped 5 min ahead (clock skew): never past now + TTL
        (400 * 24 * 60, 60, 0, 60),  # a year ahead: still now + TTL, not a year
    ],
)
def test_expiry_never_outlives_the_ttl_from_now(
    base_min: int, ttl_min: int, now_min: int, want_min: int
) -> None:
    got = expiry(
        T0 + timedelta(minutes=base_min),
        timedelta(minutes=ttl_min),
        T0 + timedelta(minutes=now_min),
    )
    assert got == T0 + timedelta(minutes=want_min)


def test_future_user_and_cache_keys_are_capped() -> None:
    ahead = T0 + timedelta(days=400)
    user = UserState("u1", SID, ahead, None, last_seen=ahead)
    assert project_user(user, 1, 50, T0) == HashWrite(
        "user:u1:state",
        {
            "current_session_id": SID,
            "last_login": format_utc(ahead),
            "preferences": "{}",
            "daily_session_count": "1",
            "remaining_sessions": "49",
        },
        epoch_ms(T0 + timedelta(hours=1)),
    )
    assert project_voice(CachedVoiceClip(1, "h", "QUJD", ahead), T0).expire_at_ms == epoch_ms(  # type: ignore[union-attr]
        T0 + timedelta(hours=24)
    )


@pytest.mark.parametrize(
    ("day", "written"),
    [
        (date(2026, 12, 6), True),  # today
        (date(2026, 12, 5), True),  # yesterday: its late events still move it
        (date(2026, 12, 4), False),
        (date(1970, 1, 1), False),  # a backlog's oldest event does not recreate its day
        (date(2026, 12, 7), False),  # tomorrow (the skew tolerance) waits for its day
    ],
)
def test_only_today_and_yesterday_have_their_stats_hash_written(day: date, written: bool) -> None:
    assert recent_days({day}, date(2026, 12, 6)) == ({day} if written else set())
