"""Pure reducers of the inference and synthesis families.

New events become cache-entry upserts (the latest miss by occurred_at wins,
decided by the SQL upsert), use counts, and per-day counters behind the
realtime stats. Latency points for the metrics sorted sets come from every
event of the batch, duplicates included: a sorted-set member is its own
identity, so adding it twice changes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from schemas.events import AiFailed, AiResponse, Event, VoiceFailed, VoiceSynthesized
from schemas.hashing import H
from schemas.keys import MetricName, business_day
from streams.model import (
    AI_FAILED,
    AI_HITS,
    AI_LATENCY_US,
    AI_MISSES,
    VOICE_FAILED,
    VOICE_HITS,
    VOICE_MISSES,
    AiEntry,
    VoiceEntry,
)


@dataclass(frozen=True, slots=True)
class LatencyPoint:
    metric: MetricName
    at: datetime
    member: str


@dataclass
class CacheChanges:
    ai: list[AiEntry] = field(default_factory=list)
    voice: list[VoiceEntry] = field(default_factory=list)
    day_counters: Counter[tuple[date, str]] = field(default_factory=Counter)


def latency_member(latency_ms: float, event_id: str) -> str:
    """`{latency_ms}:{event_id}`: 12 → "12", 12.5 → "12.5"."""
    text = str(int(latency_ms)) if float(latency_ms).is_integer() else repr(float(latency_ms))
    return f"{text}:{event_id}"


def latency_points(events: list[Event]) -> list[LatencyPoint]:
    """Points of `metrics:response_time:*` and `metrics:synthesis_time:*`."""
    points: list[LatencyPoint] = []
    for e in events:
        if isinstance(e, AiResponse):
            points.append(
                LatencyPoint(
                    "response_time", e.occurred_at, latency_member(e.latency_ms, e.event_id)
                )
            )
        elif isinstance(e, VoiceSynthesized):
            points.append(
                LatencyPoint(
                    "synthesis_time", e.occurred_at, latency_member(e.latency_ms, e.event_id)
                )
            )
    return points


def reduce_cache_events(events: list[Event], tz: ZoneInfo) -> CacheChanges:
    """Entries, uses and counters of new inference and synthesis events, in order."""
    changes = CacheChanges()
    counters = changes.day_counters
    for e in events:
        day = business_day(e.occurred_at, tz)
        if isinstance(e, AiResponse):
            counters[(day, AI_HITS if e.cache_hit else AI_MISSES)] += 1
            counters[(day, AI_LATENCY_US)] += round(e.latency_ms * 1000)
            changes.ai.append(_ai_entry(e))
        elif isinstance(e, VoiceSynthesized):
            counters[(day, VOICE_HITS if e.cache_hit else VOICE_MISSES)] += 1
            changes.voice.append(_voice_entry(e))
        elif isinstance(e, AiFailed):
            counters[(day, AI_FAILED)] += 1
        elif isinstance(e, VoiceFailed):
            counters[(day, VOICE_FAILED)] += 1
    return changes


def _ai_entry(e: AiResponse) -> AiEntry:
    miss = not e.cache_hit
    return AiEntry(
        prompt_hash=H(e.prompt),
        prompt=e.prompt,
        response=e.response if miss else None,
        provider=e.provider if miss else None,
        model=e.model if miss else None,
        cached_at=e.occurred_at if miss else None,
        source_event_id=e.event_id if miss else None,
        uses=1,
        hits=int(e.cache_hit),
        last_used_at=e.occurred_at,
    )


def _voice_entry(e: VoiceSynthesized) -> VoiceEntry:
    miss = not e.cache_hit
    return VoiceEntry(
        speaker_id=e.speaker_id,
        text_hash=H(e.text),
        text=e.text,
        audio=e.audio_bytes if miss else None,
        audio_format=e.audio_format if miss else None,
        cached_at=e.occurred_at if miss else None,
        source_event_id=e.event_id if miss else None,
        uses=1,
        hits=int(e.cache_hit),
        last_used_at=e.occurred_at,
    )
