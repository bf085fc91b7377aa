"""The AI-response and voice-clip rows as their keys project them: every read of
`ai_responses` and `voice_clips` (the upserts are the write path's, `postgres.py`).

The pipeline, the reader's recompute, replay and warm-up all read these tables
through this module and get the same row types back (`CachedAiResponse`,
`CachedVoiceClip`), so one projection per key kind turns them into the value.
Only rows that hold content are returned: an AI row once a miss stored a
response (`cached_at`), a voice row once a miss stored a clip (audio and
cached_at: `VOICE_HELD` in SQL, `model.voice_clip` in Python, the same rule).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime

import asyncpg

from streams.model import CachedAiResponse, CachedVoiceClip, voice_clip
from streams.store.base import VoiceSource
from streams.store.postgres import Connection

AI_HELD = "cached_at IS NOT NULL"
"""An `ai_responses` row holds a response once a miss stored one."""
VOICE_HELD = "cached_at IS NOT NULL AND audio IS NOT NULL"
"""The voice rule of `model.voice_clip`, in SQL: a row is projectable only when it
has audio and cached_at. Every statement below that selects clips uses it, so
ORDER BY … LIMIT counts only rows that project."""

_AI_COLUMNS = "prompt_hash, response, provider, model, cached_at"
_VOICE_COLUMNS = "speaker_id, text_hash, audio, cached_at"


def _ai(row: asyncpg.Record) -> CachedAiResponse:
    return CachedAiResponse(
        row["prompt_hash"], row["response"], row["provider"], row["model"], row["cached_at"]
    )


def _clip(row: asyncpg.Record) -> CachedVoiceClip | None:
    return voice_clip(row["speaker_id"], row["text_hash"], row["audio"], row["cached_at"])


def _clips(rows: Iterable[asyncpg.Record]) -> list[CachedVoiceClip]:
    return [c for c in map(_clip, rows) if c is not None]


# --- the keys a batch or a read asks for -------------------------------------------------
async def ai_responses(conn: Connection, prompt_hashes: Iterable[str]) -> list[CachedAiResponse]:
    """The held responses of these prompts (the pipeline after its misses; the reader)."""
    rows = await conn.fetch(
        f"SELECT {_AI_COLUMNS} FROM ai_responses WHERE prompt_hash = ANY($1::text[]) AND {AI_HELD}",
        sorted(set(prompt_hashes)),
    )
    return [_ai(r) for r in rows]


async def voice_sources(conn: Connection, keys: Iterable[tuple[int, str]]) -> list[VoiceSource]:
    """Which event's audio each held clip is, without reading the audio itself: the
    pipeline projects a clip its own batch stored from the event's base64."""
    pairs = sorted(set(keys))
    rows = await conn.fetch(
        f"""
        SELECT v.speaker_id, v.text_hash, v.cached_at, v.source_event_id::text
        FROM unnest($1::int[], $2::text[]) AS k(speaker_id, text_hash)
        JOIN voice_clips v USING (speaker_id, text_hash)
        WHERE {VOICE_HELD}
        """,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return [VoiceSource(r[0], r[1], r[2], r[3]) for r in rows]


async def voice_clip_of(
    conn: Connection, speaker_id: int, text_hash: str
) -> CachedVoiceClip | None:
    """The held clip of one key, or None (the reader; the pipeline when a later miss
    of another batch won)."""
    row = await conn.fetchrow(
        f"SELECT {_VOICE_COLUMNS} FROM voice_clips"
        f" WHERE speaker_id = $1 AND text_hash = $2 AND {VOICE_HELD}",
        speaker_id,
        text_hash,
    )
    return None if row is None else _clip(row)


# --- the most used: warm-up ----------------------------------------------------------------
async def most_used_ai_responses(conn: Connection, top: int) -> list[CachedAiResponse]:
    """The `top` held responses by use count (ties by prompt hash)."""
    rows = await conn.fetch(
        f"SELECT {_AI_COLUMNS} FROM ai_responses"
        f" WHERE {AI_HELD} ORDER BY use_count DESC, prompt_hash LIMIT $1",
        top,
    )
    return [_ai(r) for r in rows]


async def most_used_voice_clips(conn: Connection, top: int) -> list[CachedVoiceClip]:
    """The `top` held clips by use count (ties by speaker, then text hash)."""
    rows = await conn.fetch(
        f"SELECT {_VOICE_COLUMNS} FROM voice_clips"
        f" WHERE {VOICE_HELD} ORDER BY use_count DESC, speaker_id, text_hash LIMIT $1",
        top,
    )
    return _clips(rows)


# --- every row: replay and the rebuild (inside a transaction: a cursor) ----------------------
async def all_ai_responses(
    conn: Connection, since: datetime | None, now: datetime
) -> AsyncIterator[CachedAiResponse]:
    """Every held response cached at or after `since` (None: all), most used first.

    `now` is unused by the statement; every bulk read takes (since, now).
    """
    cursor = conn.cursor(
        f"SELECT {_AI_COLUMNS} FROM ai_responses"
        f" WHERE {AI_HELD} AND ($1::timestamptz IS NULL OR cached_at >= $1)"
        " AND $2::timestamptz IS NOT NULL ORDER BY use_count DESC, prompt_hash",
        since,
        now,
    )
    async for row in cursor:
        yield _ai(row)


async def all_voice_clips(
    conn: Connection, since: datetime | None, now: datetime
) -> AsyncIterator[CachedVoiceClip]:
    """Every held clip cached at or after `since` (None: all), most used first."""
    cursor = conn.cursor(
        f"SELECT {_VOICE_COLUMNS} FROM voice_clips"
        f" WHERE {VOICE_HELD}"
        " AND ($1::timestamptz IS NULL OR cached_at >= $1) AND $2::timestamptz IS NOT NULL"
        " ORDER BY use_count DESC, speaker_id, text_hash",
        since,
        now,
    )
    async for row in cursor:
        if (clip := _clip(row)) is not None:
            yield clip
