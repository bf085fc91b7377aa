"""From state to Redis: the absolute value and expiry of every projected key.

Pure functions shared by the worker, replay and the reader's read-through.
They never compute a delta: each returns the whole value a key must hold given
the PostgreSQL state, so writing it twice, late or after a crash is harmless.
An expiry already in the past becomes a delete.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson

from schemas.keys import (
    AI_RESPONSE_TTL,
    METRIC_WINDOWS,
    METRICS_TTL,
    SCENARIO_CONTEXT_TTL,
    SESSION_TTL,
    STATS_TTL,
    USER_STATE_TTL,
    VOICE_TTL,
    MetricName,
    ai_response_key_for_hash,
    epoch_ms,
    format_utc,
    metrics_key,
    scenario_context_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.model import SessionState, UserState
from streams.reducers.caches import (
    AI_FAILED,
    AI_HITS,
    AI_LATENCY_US,
    AI_MISSES,
    VOICE_FAILED,
    VOICE_HITS,
    VOICE_MISSES,
    LatencyPoint,
)
from streams.reducers.sessions import SESSIONS_STARTED


@dataclass(frozen=True, slots=True)
class HashWrite:
    """HSET every field of `key`, then PEXPIREAT `expire_at_ms`."""

    key: str
    fields: dict[str, str]
    expire_at_ms: int


@dataclass(frozen=True, slots=True)
class StringWrite:
    """SET `key` to `value` with PXAT `expire_at_ms`."""

    key: str
    value: str
    expire_at_ms: int


@dataclass(frozen=True, slots=True)
class SortedSetAdd:
    """ZADD `members`, drop members scored below `trim_below`, PEXPIRE `ttl_ms`."""

    key: str
    members: dict[str, float]
    trim_below: float
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


RedisOp = HashWrite | StringWrite | SortedSetAdd | Delete


def _json_text(value: dict[str, Any] | None) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def expiry(base: datetime, ttl: timedelta, now: datetime) -> datetime:
    """`base + ttl`, never later than `now + ttl`.

    SPEC §4 gives every key a TTL from an event time (last activity, the miss
    that cached it). An event stamped ahead of the worker's clock (within
    MAX_CLOCK_SKEW_S) must not make a key outlive its TTL as seen from now.
    """
    return min(base, now) + ttl


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
    return _hash(key, fields, expiry(session.last_activity, SESSION_TTL, now), now)


def project_user(user: UserState, sessions_today: int, quota: int, now: datetime) -> RedisOp:
    """`user:{id}:state`; `sessions_today` is for the business day of last_seen."""
    fields = {
        "current_session_id": user.current_session_id or "",
        "last_login": format_utc(user.last_login) if user.last_login else "",
        "preferences": _json_text(user.preferences),
        "daily_session_count": str(sessions_today),
        "remaining_sessions": str(max(0, quota - sessions_today)),
    }
    return _hash(
        user_state_key(user.user_id), fields, expiry(user.last_seen, USER_STATE_TTL, now), now
    )


def project_stats(
    day: date, fields: dict[str, int | float], written_at: datetime, now: datetime
) -> RedisOp:
    """`stats:realtime:{day}`: the given fields, 24 h after the write that set them."""
    text = {name: _number_text(value) for name, value in fields.items()}
    return _hash(stats_key(day), text, expiry(written_at, STATS_TTL, now), now)


def _number_text(value: int | float) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def project_ai_response(
    prompt_hash: str,
    response: str,
    provider: str,
    model: str,
    cached_at: datetime,
    now: datetime,
    ttl_from: datetime | None = None,
) -> RedisOp:
    """`ai_response:{H(prompt)}`: the JSON of SPEC §4, 1 h after the miss that cached it.

    `ttl_from` starts the hour elsewhere (warm-up loads popular entries afresh).
    """
    key = ai_response_key_for_hash(prompt_hash)
    expires = expiry(ttl_from or cached_at, AI_RESPONSE_TTL, now)
    if expires <= now:
        return Delete(key)
    value = orjson.dumps(
        {
            "prompt_hash": prompt_hash,
            "response": response,
            "provider": provider,
            "model": model,
            "cached_at": format_utc(cached_at),
        }
    ).decode()
    return StringWrite(key, value, epoch_ms(expires))


def project_voice(
    speaker_id: int,
    text_hash: str,
    audio_b64: str,
    cached_at: datetime,
    now: datetime,
    ttl_from: datetime | None = None,
) -> RedisOp:
    """`voice:{speaker_id}:{H(text)}` = the base64 audio, 24 h after the miss."""
    key = voice_key_for_hash(speaker_id, text_hash)
    expires = expiry(ttl_from or cached_at, VOICE_TTL, now)
    if expires <= now:
        return Delete(key)
    return StringWrite(key, audio_b64, epoch_ms(expires))


def project_latencies(points: Iterable[LatencyPoint], now: datetime) -> list[RedisOp]:
    """Add points to every window of their metric, trimmed to the window, TTL 5 min."""
    by_metric: dict[MetricName, dict[str, float]] = {}
    for p in points:
        by_metric.setdefault(p.metric, {})[p.member] = p.at.timestamp()
    ops: list[RedisOp] = []
    for metric, members in sorted(by_metric.items()):
        for window, span in METRIC_WINDOWS.items():
            floor = (now - span).timestamp()
            inside = {m: s for m, s in members.items() if s >= floor}
            if not inside:
                continue  # nothing written: the TTL is not renewed either
            ops.append(
                SortedSetAdd(
                    metrics_key(metric, window),
                    inside,
                    floor,
                    int(METRICS_TTL.total_seconds() * 1000),
                )
            )
    return ops


def stats_fields(
    counters: dict[str, int], active_sessions: int | None, capacity: int
) -> dict[str, int | float]:
    """Every field of `stats:realtime:{day}` from the day's counters (README defines each).

    `active_sessions` is a gauge of now: given for today's key only, and with
    it system_load = active_sessions / capacity.
    """
    c = counters.get
    ai_responses = c(AI_HITS, 0) + c(AI_MISSES, 0)
    voice = c(VOICE_HITS, 0) + c(VOICE_MISSES, 0)
    failed = c(AI_FAILED, 0) + c(VOICE_FAILED, 0)
    fields: dict[str, int | float] = {
        "total_sessions_today": c(SESSIONS_STARTED, 0),
        "avg_response_time": _ratio(c(AI_LATENCY_US, 0) / 1000, ai_responses),
        "error_rate": _ratio(failed, ai_responses + voice + failed),
        "ai_cache_hit_rate": _ratio(c(AI_HITS, 0), ai_responses),
        "voice_cache_hit_rate": _ratio(c(VOICE_HITS, 0), voice),
    }
    if active_sessions is not None:
        fields["active_sessions"] = active_sessions
        fields["system_load"] = active_sessions / capacity
    return fields


def _ratio(part: float, whole: int) -> float:
    return part / whole if whole else 0.0


def project_scenario_context(
    scenario_id: str, context: dict[str, Any], sessions: int, now: datetime
) -> RedisOp:
    """`scenario:{id}:context`: a popular scenario's latest context, loaded by warm-up."""
    value = orjson.dumps(
        {"scenario_id": scenario_id, "conversation_context": context, "sessions": sessions}
    ).decode()
    return StringWrite(
        scenario_context_key(scenario_id), value, epoch_ms(now + SCENARIO_CONTEXT_TTL)
    )
