"""What a Redis key should hold, recomputed from PostgreSQL.

One function per key family, each returning the `RedisOp` the worker would
write now (a `Delete` once the key's TTL has run out), built with the same
projection functions as the worker. The read library uses them for its
PostgreSQL fallback and read-through; replay and warm-up use the bulk forms.
"""

from __future__ import annotations

import base64
from datetime import datetime

from schemas.keys import (
    ai_response_key_for_hash,
    session_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.projections import (
    Delete,
    RedisOp,
    project_ai_response,
    project_session,
    project_user,
    project_voice,
)
from streams.reducers.sessions import business_day
from streams.settings import Settings
from streams.sinks import postgres as pg
from streams.sinks.postgres import Connection


async def session_op(conn: Connection, session_id: str, now: datetime) -> RedisOp:
    sessions = await pg.load_sessions(conn, [session_id])
    session = sessions.get(session_id)
    if session is None:
        return Delete(session_key(session_id))
    return project_session(session, now)


async def user_op(conn: Connection, settings: Settings, user_id: str, now: datetime) -> RedisOp:
    users = await pg.load_users(conn, [user_id])
    user = users.get(user_id)
    if user is None:
        return Delete(user_state_key(user_id))
    day = business_day(user.last_seen, settings.tz)
    started = await pg.user_day_started(conn, [(user_id, day)])
    return project_user(user, started.get((user_id, day), 0), settings.daily_session_quota, now)


async def ai_response_op(conn: Connection, prompt_hash: str, now: datetime) -> RedisOp:
    rows = await pg.ai_entries(conn, [prompt_hash])
    if not rows:
        return Delete(ai_response_key_for_hash(prompt_hash))
    r = rows[0]
    return project_ai_response(
        r["prompt_hash"], r["response"], r["provider"], r["model"], r["cached_at"], now
    )


async def voice_op(conn: Connection, speaker_id: int, text_hash: str, now: datetime) -> RedisOp:
    row = await conn.fetchrow(
        "SELECT audio, cached_at FROM voice_clips"
        " WHERE speaker_id = $1 AND text_hash = $2 AND cached_at IS NOT NULL",
        speaker_id,
        text_hash,
    )
    if row is None or row["audio"] is None:
        return Delete(voice_key_for_hash(speaker_id, text_hash))
    audio_b64 = base64.b64encode(row["audio"]).decode()
    return project_voice(speaker_id, text_hash, audio_b64, row["cached_at"], now)
