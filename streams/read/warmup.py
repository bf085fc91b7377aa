"""`rpcache warmup`: load the most used entries into Redis before they are asked for.

The design's pre-warming: popular AI responses, voice clips and scenario
contexts, ranked by use count in PostgreSQL, top N of each. Unlike replay,
warm-up gives an entry a fresh TTL of its family (1 h, 24 h, 1 h) even when
the entry itself is older: being popular is the reason to keep it. The rows
and their values are the worker's (`streams.store.caches`, the projections):
only entries that hold content count towards the top N.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis

from streams.projections import (
    RedisOp,
    project_ai_response,
    project_scenario_context,
    project_voice,
)
from streams.redis_targets import RedisTargets, as_targets
from streams.sinks import redis as redis_sink
from streams.store import caches, reads

log = logging.getLogger(__name__)


async def warmup(pool: asyncpg.Pool, redis: Redis | RedisTargets, top: int) -> Counter[str]:
    """Write the top `top` entries of each family, each to its family's target
    (or all to one client); return how many per family."""
    now = datetime.now(UTC)
    loaded: Counter[str] = Counter()
    async with pool.acquire() as conn:
        ai = await caches.most_used_ai_responses(conn, top)
        voice = await caches.most_used_voice_clips(conn, top)
        scenarios = await reads.popular_scenarios(conn, top)
    ops: list[RedisOp] = [project_ai_response(r, now, ttl_from=now) for r in ai]
    ops += [project_voice(c, now, ttl_from=now) for c in voice]
    ops += [project_scenario_context(sc, now) for sc in scenarios]
    await redis_sink.write_by_target(as_targets(redis), ops)
    loaded.update(ai=len(ai), voice=len(voice), scenarios=len(scenarios))
    log.info("warm-up loaded %s", dict(loaded))
    return loaded
