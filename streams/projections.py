"""From state to Redis: the absolute value and expiry of every projected key.

Pure functions shared by the worker, replay and the reader's read-through.
They never compute a delta: each returns the whole value a key must hold given
the PostgreSQL state, so writing it twice, late or after a crash is harmless.
An expiry already in the past becomes a delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from schemas.keys import (
    SESSION_TTL,
    STATS_TTL,
    USER_STATE_TTL,
    epoch_ms,
    format_utc,
    session_key,
    stats_key,
    user_state_key,
)
from streams.state import SessionState, UserState


@dataclass(frozen=True, slots=True)
class HashWrite:
    """HSET every field of `key`, then PEXPIREAT `expire_at_ms`."""

    key: str
    fields: dict[str, str]
    expire_at_ms: int


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


RedisOp = HashWrite | Delete


def _json_text(value: dict[str, Any] | None) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def _hash(key: str, fields: dict[str, str], expires: datetime, now: datetime) -> RedisOp:
    if expires <= now:
        return Delete(key)
    return HashWrite(key, fields, epoch_ms(expires))


def project_session(session: SessionState, now: datetime) -> RedisOp:
    """`session:{id}` while the session is open and inside its 30 min TTL."""
    key = session_key(session.session_id)
    if not session.is_open:
        return Delete(key)
    fields = {
        "user_id": session.user_id,
        "status": session.status,
        "speaker_id": str(session.speaker_id),
        "conversation_context": _json_text(session.conversation_context),
        "last_activity": format_utc(session.last_activity),
        "performance_stats": _json_text(session.performance_stats),
    }
    return _hash(key, fields, session.last_activity + SESSION_TTL, now)


def project_user(user: UserState, sessions_today: int, quota: int, now: datetime) -> RedisOp:
    """`user:{id}:state`; `sessions_today` is for the business day of last_seen."""
    fields = {
        "current_session_id": user.current_session_id or "",
        "last_login": format_utc(user.last_login) if user.last_login else "",
        "preferences": _json_text(user.preferences),
        "daily_session_count": str(sessions_today),
        "remaining_sessions": str(max(0, quota - sessions_today)),
    }
    return _hash(user_state_key(user.user_id), fields, user.last_seen + USER_STATE_TTL, now)


def project_stats(
    day: date, fields: dict[str, int | float], written_at: datetime, now: datetime
) -> RedisOp:
    """`stats:realtime:{day}`: the given fields, 24 h after the write that set them."""
    text = {name: _number_text(value) for name, value in fields.items()}
    return _hash(stats_key(day), text, written_at + STATS_TTL, now)


def _number_text(value: int | float) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
