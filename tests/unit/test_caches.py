"""Inference/synthesis reducers, their projections, the stats fields and alerts, pure."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from schemas import H
from schemas.events import (
    AiFailed,
    AiResponse,
    Rejection,
    RejectReason,
    VoiceFailed,
    VoiceSynthesized,
    decode_event,
)
from schemas.keys import epoch_ms
from streams.model import (
    AI_FAILED,
    AI_HITS,
    AI_LATENCY_US,
    AI_MISSES,
    SESSIONS_STARTED,
    VOICE_FAILED,
    VOICE_HITS,
    VOICE_MISSES,
    CachedAiResponse,
    CachedVoiceClip,
    DayCounters,
)
from streams.observe.alerts import Reading, Rule, transitions
from streams.projections import (
    Delete,
    SortedSetAdd,
    StringWrite,
    day_figures,
    project_ai_response,
    project_latencies,
    project_voice,
    stats_fields,
)
from streams.reducers.caches import latency_member, latency_points, reduce_cache_events

T0 = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
DAY = date(2025, 1, 30)
SID = "550e8400-e29b-41d4-a716-446655440000"


def common(minutes: float = 0) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": T0 + timedelta(minutes=minutes),
        "user_id": "u1",
        "session_id": SID,
    }


def ai(hit: bool, latency: float = 100, prompt: str = "hello", minutes: float = 0) -> AiResponse:
    return AiResponse(
        **common(minutes),
        prompt=prompt,
        response="hi",
        provider="groq",
        model="llama",
        latency_ms=latency,
        cache_hit=hit,
    )


def voice(hit: bool, audio: bytes = b"RIFFdata", minutes: float = 0) -> VoiceSynthesized:
    return VoiceSynthesized(
        **common(minutes),
        speaker_id=6,
        text="konnichiwa",
        audio=base64.b64encode(audio).decode(),
        latency_ms=80,
        cache_hit=hit,
    )


def test_counters_entries_and_latency_sum() -> None:
    events = [
        ai(False, 120.5),
        ai(True, 30),
        ai(True, 10),
        AiFailed(**common(), provider="g", model="m", error="timeout", latency_ms=5000),
        voice(False),
        voice(True),
        VoiceFailed(**common(), speaker_id=1, text="t", error="busy", latency_ms=1),
    ]
    ch = reduce_cache_events(events, ZoneInfo("UTC"))  # type: ignore[arg-type]
    assert ch.day_counters == {
        (DAY, AI_MISSES): 1,
        (DAY, AI_HITS): 2,
        (DAY, AI_LATENCY_US): 160_500,
        (DAY, AI_FAILED): 1,
        (DAY, VOICE_MISSES): 1,
        (DAY, VOICE_HITS): 1,
        (DAY, VOICE_FAILED): 1,
    }
    miss, hit = ch.ai[0], ch.ai[1]
    assert (miss.prompt_hash, miss.response, miss.cached_at, miss.hits) == (H("hello"), "hi", T0, 0)
    assert (hit.response, hit.cached_at, hit.hits, hit.uses) == (None, None, 1, 1)
    assert ch.voice[0].audio == b"RIFFdata" and ch.voice[1].audio is None


def test_latency_members() -> None:
    assert latency_member(12, "e") == "12:e"
    assert latency_member(12.0, "e") == "12:e"
    assert latency_member(12.5, "e") == "12.5:e"
    e = ai(False, 42)
    (point,) = latency_points(
        [e, AiFailed(**common(), provider="g", model="m", error="x", latency_ms=1)]
    )
    assert (point.metric, point.member, point.at) == ("response_time", f"42:{e.event_id}", T0)


def test_ai_response_value_and_ttl() -> None:
    op = project_ai_response(CachedAiResponse(H("hello"), "hi", "groq", "llama", T0), now=T0)
    assert isinstance(op, StringWrite)
    assert op.key == f"ai_response:{H('hello')}"
    assert orjson.loads(op.value) == {
        "prompt_hash": H("hello"),
        "response": "hi",
        "provider": "groq",
        "model": "llama",
        "cached_at": "2025-01-30T10:00:00Z",
    }
    assert op.expire_at_ms == epoch_ms(T0 + timedelta(hours=1))
    old = CachedAiResponse(H("x"), "", "", "", T0)
    assert project_ai_response(old, T0 + timedelta(hours=1)) == Delete(f"ai_response:{H('x')}")


def test_voice_value_and_ttl() -> None:
    op = project_voice(CachedVoiceClip(6, H("t"), "UklGRg==", T0), now=T0)
    assert op == StringWrite(f"voice:6:{H('t')}", "UklGRg==", epoch_ms(T0 + timedelta(hours=24)))


def test_latency_windows_trim_old_points() -> None:
    now = T0 + timedelta(minutes=10)
    fresh, old = ai(False, 10, minutes=9.5), ai(False, 20, minutes=4)
    ops = project_latencies(latency_points([fresh, old]), now)
    by_key = {op.key: op for op in ops if isinstance(op, SortedSetAdd)}
    assert set(by_key) == {
        "metrics:response_time:1m",
        "metrics:response_time:5m",
        "metrics:response_time:1h",
    }
    assert set(by_key["metrics:response_time:1m"].members) == {f"10:{fresh.event_id}"}
    assert set(by_key["metrics:response_time:5m"].members) == {f"10:{fresh.event_id}"}
    assert len(by_key["metrics:response_time:1h"].members) == 2
    assert by_key["metrics:response_time:1m"].trim_below == (now - timedelta(minutes=1)).timestamp()
    assert all(op.ttl_ms == 300_000 for op in by_key.values())


def test_stats_fields_hand_computed() -> None:
    counters = {
        SESSIONS_STARTED: 4,
        AI_HITS: 17,
        AI_MISSES: 3,
        AI_LATENCY_US: 2_000_000,
        AI_FAILED: 1,
        VOICE_HITS: 6,
        VOICE_MISSES: 2,
        VOICE_FAILED: 1,
    }
    fields = stats_fields(day_figures(DAY, DayCounters.of(counters), 3, capacity=30))
    assert fields == {
        "total_sessions_today": 4,
        "avg_response_time": 100.0,  # 2000 ms over 20 ai.response
        "error_rate": 2 / 30,  # 2 failed over 20 + 8 + 2
        "ai_cache_hit_rate": 0.85,
        "voice_cache_hit_rate": 0.75,
        "active_sessions": 3,
        "system_load": 0.1,
    }
    assert stats_fields(day_figures(DAY, DayCounters.of({}), None, 30)) == {
        "total_sessions_today": 0,
        "avg_response_time": 0.0,
        "error_rate": 0.0,
        "ai_cache_hit_rate": 0.0,
        "voice_cache_hit_rate": 0.0,
    }


def test_audio_limit_is_inclusive_and_stored_form_drops_audio() -> None:
    def raw(n: int) -> bytes:
        return voice(False, b"\x01" * n).to_json()

    ok = decode_event(raw(1000), topic=None, max_bytes=10_000, max_audio_bytes=1000)
    assert isinstance(ok, VoiceSynthesized) and len(ok.audio_bytes) == 1000
    stored = orjson.loads(ok.stored_json())
    assert stored["audio"] == {"sha256": hashlib.sha256(b"\x01" * 1000).hexdigest(), "bytes": 1000}
    over = decode_event(raw(1001), topic=None, max_bytes=10_000, max_audio_bytes=1000)
    assert isinstance(over, Rejection) and over.reason == RejectReason.AUDIO_TOO_LARGE


RULE = Rule("ai_cache_hit_rate_low", "ai_cache_hit_rate", "WARNING", "<", 0.7)


@pytest.mark.parametrize(
    ("reading", "firing", "expected"),
    [
        (Reading(0.5), False, "firing"),
        (Reading(0.5), True, None),  # once per crossing
        (Reading(0.9), True, "resolved"),
        (Reading(0.9), False, None),
        (Reading(0.1, enough=False), False, None),  # too few samples to judge
        (Reading(0.7), False, None),  # the threshold itself is not below it
    ],
)
def test_alert_transitions(reading: Reading, firing: bool, expected: str | None) -> None:
    alerts = transitions([RULE], {"ai_cache_hit_rate": reading}, {RULE.name: firing}, T0)
    assert [a.state for a in alerts] == ([expected] if expected else [])
    if alerts:
        msg = orjson.loads(alerts[0].to_json())
        assert msg == {
            "rule": RULE.name,
            "state": expected,
            "level": "WARNING",
            "metric": "ai_cache_hit_rate",
            "value": reading.value,
            "threshold": 0.7,
            "time": "2025-01-30T10:00:00Z",
        }
