"""From state to Redis: the absolute value and expiry of every projected key.

Pure functions shared by the worker, replay and the reader's read-through.
They never compute a delta: each returns the whole value a key must hold given
the PostgreSQL state, so writing it twice, late or after a crash is harmless.
An expiry already in the past becomes a delete.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

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
    business_day,
    epoch_ms,
    format_utc,
    metrics_key,
    scenario_context_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.model import (
    CachedAiResponse,
    CacheDay,
    CachedVoiceClip,
    DayCounters,
    DayFigures,
    PopularScenario,
    SessionState,
    UserState,
)
from streams.reducers.caches import LatencyPoint


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


def user_day(user: UserState, tz: ZoneInfo) -> tuple[str, date]:
    """The (user, business day) whose started sessions `user:{id}:state` shows: the
    day of last_seen. Every caller of `project_user` looks its count up by this."""
    return user.user_id, business_day(user.last_seen, tz)


def project_user(user: UserState, sessions_today: int, quota: int, now: datetime) -> RedisOp:
    """`user:{id}:state`; `sessions_today` is for `user_day(user)`."""
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
    return _hash(stats_key(day), stats_text(fields), expiry(written_at, STATS_TTL, now), now)


def stats_text(fields: dict[str, int | float]) -> dict[str, str]:
    """The stats hash's fields as Redis holds them (floats to 6 significant digits)."""
    return {name: _number_text(value) for name, value in fields.items()}


def _number_text(value: int | float) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def project_ai_response(
    row: CachedAiResponse, now: datetime, ttl_from: datetime | None = None
) -> RedisOp:
    """`ai_response:{H(prompt)}`: the JSON of SPEC §4, 1 h after the miss that cached it.

    `ttl_from` starts the hour elsewhere (warm-up loads popular entries afresh).
    """
    key = ai_response_key_for_hash(row.prompt_hash)
    expires = expiry(ttl_from or row.cached_at, AI_RESPONSE_TTL, now)
    if expires <= now:
        return Delete(key)
    value = orjson.dumps(
        {
            "prompt_hash": row.prompt_hash,
            "response": row.response,
            "provider": row.provider,
            "model": row.model,
            "cached_at": format_utc(row.cached_at),
        }
    ).decode()
    return StringWrite(key, value, epoch_ms(expires))


def project_voice(
    clip: CachedVoiceClip, now: datetime, ttl_from: datetime | None = None
) -> RedisOp:
    """`voice:{speaker_id}:{H(text)}` = the base64 audio, 24 h after the miss.

    Only a held clip has a value: rows become clips through `model.voice_clip`.
    """
    key = voice_key_for_hash(clip.speaker_id, clip.text_hash)
    expires = expiry(ttl_from or clip.cached_at, VOICE_TTL, now)
    if expires <= now:
        return Delete(key)
    return StringWrite(key, clip.audio_b64, epoch_ms(expires))


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


def day_figures(
    day: date, counters: DayCounters, active_sessions: int | None, capacity: int
) -> DayFigures:
    """Every figure of a business day from its counters: the one place they are computed.

    `active_sessions` is a gauge of now: given for today only, and with it
    system_load = active_sessions / capacity. The stats hash (`stats_fields`),
    `/metrics`, `/dashboard` and the alert rules all read what this returns.
    """
    c = counters
    ai_responses = c.ai_hits + c.ai_misses
    voice = c.voice_hits + c.voice_misses
    failed = c.ai_failed + c.voice_failed
    return DayFigures(
        day=day,
        sessions_started=c.sessions_started,
        ai=CacheDay(c.ai_hits, c.ai_misses, ai_responses, _ratio(c.ai_hits, ai_responses)),
        voice=CacheDay(c.voice_hits, c.voice_misses, voice, _ratio(c.voice_hits, voice)),
        avg_response_ms=_ratio(c.ai_latency_us / 1000, ai_responses),
        error_rate=_ratio(failed, ai_responses + voice + failed),
        active_sessions=active_sessions,
        system_load=None if active_sessions is None else active_sessions / capacity,
    )


def figures_of_days(
    counters: Mapping[date, DayCounters], today: date, active_sessions: int, capacity: int
) -> dict[date, DayFigures]:
    """`day_figures` of each day; the gauge of now (active sessions) is today's only."""
    return {
        day: day_figures(day, c, active_sessions if day == today else None, capacity)
        for day, c in counters.items()
    }


def _ratio(part: float, whole: int) -> float:
    return part / whole if whole else 0.0


def stats_fields(figures: DayFigures) -> dict[str, int | float]:
    """Every field of `stats:realtime:{day}`: the day's figures under SPEC §4's names.

    active_sessions and system_load only when the figures have them (today).
    """
    fields: dict[str, int | float] = {
        "total_sessions_today": figures.sessions_started,
        "avg_response_time": figures.avg_response_ms,
        "error_rate": figures.error_rate,
        "ai_cache_hit_rate": figures.ai.hit_rate,
        "voice_cache_hit_rate": figures.voice.hit_rate,
    }
    if figures.active_sessions is not None and figures.system_load is not None:
        fields["active_sessions"] = figures.active_sessions
        fields["system_load"] = figures.system_load
    return fields


def project_scenario_context(scenario: PopularScenario, now: datetime) -> RedisOp:
    """`scenario:{id}:context`: a popular scenario's latest context, loaded by warm-up."""
    value = orjson.dumps(
        {
            "scenario_id": scenario.scenario_id,
            "conversation_context": scenario.context,
            "sessions": scenario.sessions,
        }
    ).decode()
    return StringWrite(
        scenario_context_key(scenario.scenario_id), value, epoch_ms(now + SCENARIO_CONTEXT_TTL)
    )
