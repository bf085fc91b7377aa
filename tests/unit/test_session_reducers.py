"""The session reducers as pure functions: state in, state and counters out."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schemas.events import (
    RejectReason,
    SessionActivity,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SessionUpdated,
    UserLogin,
)
from streams.model import SESSIONS_STARTED, SessionState, UserState
from streams.reducers.sessions import expire_idle, reduce_session_events

T0 = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
UTC_TZ = ZoneInfo("UTC")
SID = "550e8400-e29b-41d4-a716-446655440000"


def ev(cls: type[SessionEvent], minutes: float = 0, user: str = "u1", **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": T0 + timedelta(minutes=minutes),
        "user_id": user,
    }
    if cls is not UserLogin:
        fields["session_id"] = kw.pop("session_id", SID)
    return cls(**fields, **kw)


def run(
    events: list[Any],
    sessions: dict[str, SessionState] | None = None,
    users: dict[str, UserState] | None = None,
    tz: ZoneInfo = UTC_TZ,
) -> Any:
    return reduce_session_events(events, sessions or {}, users or {}, tz)


def test_start_creates_session_user_and_counts_the_day() -> None:
    ch = run([ev(SessionStarted, speaker_id=6, conversation_context={"scene": "cafe"})])
    s = ch.sessions[SID]
    assert (s.status, s.speaker_id, s.conversation_context) == ("active", 6, {"scene": "cafe"})
    assert s.last_activity == T0 and s.business_day == date(2025, 1, 30)
    assert ch.users["u1"].current_session_id == SID
    assert ch.user_day_started == {("u1", date(2025, 1, 30)): 1}
    assert ch.day_counters == {(date(2025, 1, 30), SESSIONS_STARTED): 1}


def test_business_day_follows_business_tz() -> None:
    # 16:00 UTC is already the next day in Tokyo.
    late = ev(SessionStarted, minutes=6 * 60, speaker_id=1)
    ch = run([late], tz=ZoneInfo("Asia/Tokyo"))
    assert ch.sessions[SID].business_day == date(2025, 1, 31)
    assert ch.day_counters == {(date(2025, 1, 31), SESSIONS_STARTED): 1}


def test_updates_and_activity_move_last_activity() -> None:
    ch = run(
        [
            ev(SessionStarted, speaker_id=6),
            ev(SessionUpdated, 5, status="paused", speaker_id=2, performance_stats={"wpm": 90}),
            ev(SessionActivity, 10, performance_stats={"wpm": 95}),
        ]
    )
    s = ch.sessions[SID]
    assert (s.status, s.speaker_id, s.performance_stats) == ("paused", 2, {"wpm": 95})
    assert s.last_activity == T0 + timedelta(minutes=10)
    assert ch.users["u1"].last_seen == T0 + timedelta(minutes=10)


def test_end_closes_session_and_clears_current_session() -> None:
    ch = run([ev(SessionStarted, speaker_id=6), ev(SessionEnded, 3, reason="bye")])
    s = ch.sessions[SID]
    assert (s.status, s.end_reason, s.ended_at) == ("ended", "bye", T0 + timedelta(minutes=3))
    assert ch.users["u1"].current_session_id is None


def test_ending_twice_changes_nothing() -> None:
    first = run([ev(SessionStarted, speaker_id=6), ev(SessionEnded, 3)])
    again = run([ev(SessionEnded, 9)], first.sessions, first.users)
    assert again.sessions[SID].ended_at == T0 + timedelta(minutes=3)
    assert not again.rejections


def test_idle_for_thirty_minutes_expires_on_next_event() -> None:
    ch = run([ev(SessionStarted, speaker_id=6), ev(SessionActivity, 31)])
    s = ch.sessions[SID]
    assert s.status == "expired"
    assert s.ended_at == T0 + timedelta(minutes=30)
    assert s.last_activity == T0  # the late activity does not revive it
    assert ch.users["u1"].current_session_id is None


def test_sweeper_expires_idle_sessions_only() -> None:
    started = run(
        [
            ev(SessionStarted, speaker_id=6),
            ev(SessionStarted, 20, session_id=str(uuid.uuid4()), user="u2", speaker_id=1),
        ]
    )
    ch = expire_idle(started.sessions, started.users, T0 + timedelta(minutes=30))
    assert ch.sessions[SID].status == "expired"
    assert ch.dirty_sessions == {SID}
    assert ch.users["u1"].current_session_id is None
    assert ch.users["u2"].current_session_id is not None


def test_activity_within_ttl_revives_a_session_the_sweeper_expired_early() -> None:
    started = run([ev(SessionStarted, speaker_id=6)])
    swept = expire_idle(started.sessions, started.users, T0 + timedelta(minutes=45))
    ch = run([ev(SessionActivity, 29)], swept.sessions, swept.users)
    assert ch.sessions[SID].status == "active"
    assert ch.users["u1"].current_session_id == SID


def test_login_sets_preferences_and_keeps_the_latest_login() -> None:
    ch = run(
        [ev(UserLogin, 5, preferences={"lang": "ja"}), ev(UserLogin, 1, preferences={"lang": "en"})]
    )
    user = ch.users["u1"]
    assert user.last_login == T0 + timedelta(minutes=5)
    assert user.preferences == {"lang": "ja"}


def test_rejections() -> None:
    other = str(uuid.uuid4())
    started = run([ev(SessionStarted, speaker_id=6)])
    ch = run(
        [
            ev(SessionActivity, session_id=other),
            ev(SessionActivity, 1, user="intruder"),
            ev(SessionStarted, 2, speaker_id=1),
        ],
        started.sessions,
        started.users,
    )
    assert [r.reason for _, r in ch.rejections] == [
        RejectReason.UNKNOWN_SESSION,
        RejectReason.SESSION_OWNER_MISMATCH,
        RejectReason.DUPLICATE_SESSION,
    ]
    assert not ch.day_counters


def test_inputs_are_not_mutated() -> None:
    started = run([ev(SessionStarted, speaker_id=6)])
    before = (started.sessions[SID].status, started.users["u1"].current_session_id)
    run([ev(SessionEnded, 1)], started.sessions, started.users)
    assert (started.sessions[SID].status, started.users["u1"].current_session_id) == before


S2 = "550e8400-e29b-41d4-a716-446655440002"


@pytest.mark.parametrize(
    ("order", "current"),
    [
        (["early", "late"], S2),  # in event order: the later start is current
        (["late", "early"], S2),  # the earlier start arrives last: still the later one
    ],
)
def test_current_session_follows_event_time_not_arrival(order: list[str], current: str) -> None:
    starts = {
        "early": ev(SessionStarted, minutes=0, speaker_id=1),
        "late": ev(SessionStarted, minutes=5, speaker_id=1, session_id=S2),
    }
    ch = run([starts[name] for name in order])
    assert ch.users["u1"].current_session_id == current
    assert ch.user_day_started == {("u1", date(2025, 1, 30)): 2}


def test_a_late_start_after_the_current_one_ended_becomes_current() -> None:
    """The later session is over (ended, or idle past its TTL): the earlier start
    arriving now is the user's only open session, so it is current."""
    late = ev(SessionStarted, minutes=5, speaker_id=1, session_id=S2)
    ended = ev(SessionEnded, minutes=6, session_id=S2)
    early = ev(SessionStarted, minutes=0, speaker_id=1)
    assert run([late, ended, early]).users["u1"].current_session_id == SID
