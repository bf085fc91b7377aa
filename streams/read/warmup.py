"""`rpcache warmup`: load the most used entries into Redis before they are asked for.

The design's pre-warming: popular AI responses, voice clips and scenario
contexts, ranked by use count in PostgreSQL, top N of each. Unlike replay,
warm-up gives an entry a fresh TTL of its family (1 h, 24 h, 1 h) even when
the entry itself is older: being popular is the reason to keep it.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import orjson
from redis.asyncio import Redis

from streams.projections import (
    RedisOp,
    project_ai_response,
    project_scenario_context,
    project_voice,
)
from streams.sinks import redis as redis_sink

log = logging.getLogger(__name__)


async def warmup(pool: asyncpg.Pool, redis: Redis, top: int) -> Counter[str]:
    """Write the top `top` entries of each family; return how many per family."""
    now = datetime.now(UTC)
    loaded: Counter[str] = Counter()
    async with pool.acquire() as conn:
        ai = await conn.fetch(
            "SELECT prompt_hash, response, provider, model, cached_at FROM ai_responses"
            " WHERE cached_at IS NOT NULL ORDER BY use_count DESC, prompt_hash LIMIT $1",
            top,
        )
        voice = await conn.fetch(
            "SELECT speaker_id, text_hash, audio, cached_at FROM voice_clips"
            " WHERE audio IS NOT NULL ORDER BY use_count DESC, speaker_id, text_hash LIMIT $1",
            top,
        )
        scenarios = await conn.fetch(
            """
            SELECT scenario_id, count(*) AS sessions,
                   (array_agg(conversation_context::text ORDER BY started_at DESC)
                        FILTER (WHERE conversation_context IS NOT NULL))[1] AS context
            FROM sessions WHERE scenario_id IS NOT NULL
            GROUP BY scenario_id ORDER BY sessions DESC, scenario_id LIMIT $1
            """,
            top,
        )
    ops: list[RedisOp] = [
        project_ai_response(r["prompt_hash"], r["response"], r["provider"], r["model"],
                            r["cached_at"], now, ttl_from=now)
        for r in ai
    ]  # fmt: skip
    ops += [
        project_voice(r["speaker_id"], r["text_hash"], base64.b64encode(r["audio"]).decode(),
                      r["cached_at"], now, ttl_from=now)
        for r in voice
    ]  # fmt: skip
    ops += [
        project_scenario_context(
            r["scenario_id"], orjson.loads(r["context"] or "{}"), r["sessions"], now
        )
        for r in scenarios
    ]
    await redis_sink.write(redis, ops)
    loaded.update(ai=len(ai), voice=len(voice), scenarios=len(scenarios))
    log.info("warm-up loaded %s", dict(loaded))
    return loaded
