"""Pure reducers of the session events: events in, new state and counters out.

`reduce_session_events` applies new (never seen before) events, in Kafka
order, to the sessions and users they touch. It does no I/O; the pipeline
loads the state before and saves `SessionChanges` after, in one transaction.

Time is event time: a session idle for 30 minutes (SESSION_TTL) counts as
expired from `last_activity + 30 min`, whether the sweeper or a later event
notices it first, so a replay lands on the same state as the live run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import singledispatch
from zoneinfo import ZoneInfo

from schemas.events import (
    Rejection,
    RejectReason,
    SessionActivity,
    SessionEnded,
    SessionEvent,
    SessionScoped,
    SessionStarted,
    SessionUpdated,
    UserLogin,
)
from schemas.keys import SESSION_TTL, business_day
from streams.model import SESSIONS_STARTED, SessionState, UserState, copy_session, copy_user


@dataclass
class SessionChanges:
    """Everything a batch changed; the sink writes it, the projector reads it."""

    sessions: dict[str, SessionState]
    users: dict[str, UserState]
    dirty_sessions: set[str] = field(default_factory=set)
    dirty_users: set[str] = field(default_factory=set)
    user_day_started: Counter[tuple[str, date]] = field(default_factory=Counter)
    day_counters: Counter[tuple[date, str]] = field(default_factory=Counter)
    rejections: list[tuple[SessionScoped | SessionEvent, Rejection]] = field(default_factory=list)


@dataclass(frozen=True)
class _Ctx:
    changes: SessionChanges
    tz: ZoneInfo


def reduce_session_events(
    events: list[SessionEvent],
    sessions: dict[str, SessionState],
    users: dict[str, UserState],
    tz: ZoneInfo,
) -> SessionChanges:
    """Apply `events` (in order) to copies of `sessions` and `users`."""
    changes = SessionChanges(
        sessions={k: copy_session(v) for k, v in sessions.items()},
        users={k: copy_user(v) for k, v in users.items()},
    )
    ctx = _Ctx(changes, tz)
    for event in events:
        _touch_user(ctx, event.user_id, event.occurred_at)
        _apply(event, ctx)
    return changes


def expire_idle(
    sessions: dict[str, SessionState], users: dict[str, UserState], now: datetime
) -> SessionChanges:
    """Mark every open session idle for SESSION_TTL as expired (the sweeper)."""
    changes = SessionChanges(
        sessions={k: copy_session(v) for k, v in sessions.items()},
        users={k: copy_user(v) for k, v in users.items()},
    )
    for session in changes.sessions.values():
        if session.is_open and session.last_activity + SESSION_TTL <= now:
            _expire(changes, session)
    return changes


# --- per event type -----------------------------------------------------------
@singledispatch
def _apply(event: SessionEvent, ctx: _Ctx) -> None:
    raise TypeError(f"no session reducer for {type(event).__name__}")


@_apply.register
def _login(event: UserLogin, ctx: _Ctx) -> None:
    user = ctx.changes.users[event.user_id]
    if user.last_login is None or event.occurred_at >= user.last_login:
        user.last_login = event.occurred_at
        if event.preferences is not None:
            user.preferences = event.preferences


@_apply.register
def _started(event: SessionStarted, ctx: _Ctx) -> None:
    changes = ctx.changes
    if event.session_id in changes.sessions:
        _reject(ctx, event, RejectReason.DUPLICATE_SESSION, "session_id was already started")
        return
    day = business_day(event.occurred_at, ctx.tz)
    changes.sessions[event.session_id] = SessionState(
        session_id=event.session_id,
        user_id=event.user_id,
        status="active",
        speaker_id=event.speaker_id,
        scenario_id=event.scenario_id,
        conversation_context=event.conversation_context,
        performance_stats=None,
        started_at=event.occurred_at,
        business_day=day,
        last_activity=event.occurred_at,
    )
    changes.dirty_sessions.add(event.session_id)
    user = changes.users[event.user_id]
    if _newer_than_current(changes, user, event.occurred_at):
        user.current_session_id = event.session_id
    changes.user_day_started[(event.user_id, day)] += 1
    changes.day_counters[(day, SESSIONS_STARTED)] += 1


@_apply.register
def _updated(event: SessionUpdated, ctx: _Ctx) -> None:
    session = _live_session(ctx, event)
    if session is None:
        return
    if event.status is not None:
        session.status = event.status
    if event.speaker_id is not None:
        session.speaker_id = event.speaker_id
    if event.conversation_context is not None:
        session.conversation_context = event.conversation_context
    if event.performance_stats is not None:
        session.performance_stats = event.performance_stats


@_apply.register
def _activity(event: SessionActivity, ctx: _Ctx) -> None:
    session = _live_session(ctx, event)
    if session is not None and event.performance_stats is not None:
        session.performance_stats = event.performance_stats


@_apply.register
def _ended(event: SessionEnded, ctx: _Ctx) -> None:
    session = _owned_session(ctx, event)
    if session is None:
        return
    _expire_if_idle(ctx.changes, session, event.occurred_at)
    if not session.is_open:
        return  # already ended or expired: ending twice changes nothing
    session.status = "ended"
    session.ended_at = event.occurred_at
    session.end_reason = event.reason
    _close_for_user(ctx.changes, session)


# --- helpers ------------------------------------------------------------------
def _newer_than_current(changes: SessionChanges, user: UserState, started_at: datetime) -> bool:
    """Does a session started at `started_at` become the user's current one?

    Event time decides, not arrival order: a start that arrives late, while a
    session started after it is still open, leaves current_session_id alone.
    The caller loads the current session for this (SessionHandler.apply); when
    it is unknown, the new start wins.
    """
    current = changes.sessions.get(user.current_session_id or "")
    return (
        current is None
        or not current.is_open
        or current.last_activity + SESSION_TTL <= started_at
        or current.started_at <= started_at
    )


def _touch_user(ctx: _Ctx, user_id: str, at: datetime) -> None:
    """Every session event renews the user's state (and its 1 h TTL)."""
    users = ctx.changes.users
    user = users.get(user_id)
    if user is None:
        users[user_id] = UserState(user_id, None, None, None, last_seen=at)
    elif at > user.last_seen:
        user.last_seen = at
    ctx.changes.dirty_users.add(user_id)


def _owned_session(ctx: _Ctx, event: SessionScoped) -> SessionState | None:
    session = ctx.changes.sessions.get(event.session_id)
    if session is None:
        _reject(ctx, event, RejectReason.UNKNOWN_SESSION, "no session.started for this session_id")
        return None
    if session.user_id != event.user_id:
        _reject(
            ctx, event, RejectReason.SESSION_OWNER_MISMATCH, "session belongs to another user_id"
        )
        return None
    ctx.changes.dirty_sessions.add(session.session_id)
    return session


def _live_session(ctx: _Ctx, event: SessionScoped) -> SessionState | None:
    """The session an update applies to, or None when it is over.

    An update within SESSION_TTL of the last activity also revives a session
    that the sweeper expired early (the worker was lagging behind).
    """
    session = _owned_session(ctx, event)
    if session is None:
        return None
    at = event.occurred_at
    _expire_if_idle(ctx.changes, session, at)
    if session.status == "expired" and at < session.last_activity + SESSION_TTL:
        session.status = "active"
        session.ended_at = None
        ctx.changes.users[session.user_id].current_session_id = session.session_id
    if not session.is_open:
        return None
    session.last_activity = max(session.last_activity, at)
    return session


def _expire_if_idle(changes: SessionChanges, session: SessionState, at: datetime) -> None:
    if session.is_open and session.last_activity + SESSION_TTL <= at:
        _expire(changes, session)


def _expire(changes: SessionChanges, session: SessionState) -> None:
    session.status = "expired"
    session.ended_at = session.last_activity + SESSION_TTL
    changes.dirty_sessions.add(session.session_id)
    _close_for_user(changes, session)


def _close_for_user(changes: SessionChanges, session: SessionState) -> None:
    user = changes.users.get(session.user_id)
    if user is not None and user.current_session_id == session.session_id:
        user.current_session_id = None
        changes.dirty_users.add(user.user_id)


def _reject(
    ctx: _Ctx, event: SessionScoped | SessionEvent, reason: RejectReason, detail: str
) -> None:
    ctx.changes.rejections.append((event, Rejection(reason, detail, event.event_id)))
