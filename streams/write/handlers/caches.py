"""The inference and synthesis handlers: AI-response and voice-clip caches,
latency metrics and the stats counters they feed.

Inside the batch transaction: upsert entries and use counts of the new
events, add their day counters; then project the entries the batch's misses
touched and the latency points of every event in the batch (the stats hash
is the leader's stats timer's: streams/write/handlers/stats.py).
Voice audio is written to Redis from the event's own base64 string (the same
bytes PostgreSQL now holds), so a clip is never re-encoded on the hot path.
The rows are read (`Tx.ai_responses`, `Tx.voice_sources`, `Tx.voice_clip_of`: on
PostgreSQL, `streams.store.caches`) and projected (`project_ai_response`,
`project_voice`) exactly as the reader, replay and warm-up read and project them.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from schemas.events import AiResponse, Event, VoiceSynthesized
from schemas.hashing import H
from schemas.keys import INFERENCE_TOPIC, SYNTHESIS_TOPIC, voice_key_for_hash
from streams.model import CachedVoiceClip
from streams.projections import (
    Delete,
    RedisOp,
    project_ai_response,
    project_latencies,
    project_voice,
)
from streams.reducers.caches import latency_points, reduce_cache_events
from streams.store.base import StoredEvent, Tx
from streams.write.handlers.base import HandlerResult


class CacheHandler:
    """Serves both topics: each event type only touches its own tables."""

    def __init__(self, topic_suffix: str, tz: ZoneInfo) -> None:
        assert topic_suffix in (INFERENCE_TOPIC, SYNTHESIS_TOPIC)
        self.topic_suffix = topic_suffix
        self.tz = tz

    async def apply(
        self, tx: Tx, new: list[StoredEvent], batch: list[StoredEvent], now: datetime
    ) -> HandlerResult:
        changes = reduce_cache_events([s.event for s in new], self.tz)
        await tx.upsert_ai_entries(changes.ai)
        await tx.upsert_voice_entries(changes.voice)
        await tx.add_day_counters(changes.day_counters)
        events = [s.event for s in batch]
        ops: list[RedisOp] = []
        ops += await self._ai_ops(tx, events, now)
        ops += await self._voice_ops(tx, events, now)
        ops += project_latencies(latency_points(events), now)
        return HandlerResult(redis_ops=ops)

    @staticmethod
    async def _ai_ops(tx: Tx, events: list[Event], now: datetime) -> list[RedisOp]:
        hashes = {H(e.prompt) for e in events if isinstance(e, AiResponse) and not e.cache_hit}
        if not hashes:
            return []
        return [project_ai_response(row, now) for row in await tx.ai_responses(hashes)]

    @staticmethod
    async def _voice_ops(tx: Tx, events: list[Event], now: datetime) -> list[RedisOp]:
        misses = {
            e.event_id: e for e in events if isinstance(e, VoiceSynthesized) and not e.cache_hit
        }
        if not misses:
            return []
        keys = {(e.speaker_id, H(e.text)) for e in misses.values()}
        ops: list[RedisOp] = []
        for row in await tx.voice_sources(keys):
            source = misses.get(row.source_event_id or "")
            clip: CachedVoiceClip | None
            if source is not None:  # this batch's miss: its own base64, not re-encoded
                clip = CachedVoiceClip(row.speaker_id, row.text_hash, source.audio, row.cached_at)
            else:  # a later clip won, from another batch: project what PostgreSQL holds
                clip = await tx.voice_clip_of(row.speaker_id, row.text_hash)
            if clip is None:
                ops.append(Delete(voice_key_for_hash(row.speaker_id, row.text_hash)))
            else:
                ops.append(project_voice(clip, now))
        return ops
