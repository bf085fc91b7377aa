"""Notice that Redis lost its data and rebuild it from PostgreSQL, gradually.

A data-loss marker key (`rpcache:loaded`, refreshed on every check) is present for
as long as Redis holds the projection. A restart with an empty dataset, a
failover to an empty replica or a FLUSHALL all remove it; the leader worker
then runs replay at REBUILD_RATE keys per second (live caches first, most
used entries first), announces start and end on the alerts topic and in the
log, and sets the marker again with the server's run_id. Reads keep being
served from PostgreSQL (read-through) for whatever is not back yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import orjson
from redis.asyncio import Redis

from schemas.keys import LOADED_MARKER_KEY, LOADED_MARKER_TTL
from streams.read.replay import ReplaySummary, replay
from streams.settings import Settings

log = logging.getLogger(__name__)

Announce = Callable[[str, float], Awaitable[None]]
"""(state "firing"|"resolved", keys written so far) → publish the alert."""


class RedisWatch:
    """Checks the data-loss marker; owns at most one rebuild task at a time."""

    def __init__(
        self, pool: asyncpg.Pool, redis: Redis, settings: Settings, announce: Announce
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.settings = settings
        self.announce = announce
        self.task: asyncio.Task[ReplaySummary] | None = None
        self.rebuilds = 0

    @property
    def rebuilding(self) -> bool:
        return self.task is not None and not self.task.done()

    async def check(self) -> bool:
        """Refresh the marker, or start a rebuild when it is gone. True if started."""
        if self.rebuilding:
            return False
        if await self.redis.expire(LOADED_MARKER_KEY, LOADED_MARKER_TTL):
            return False
        info = await self.redis.info("server")
        self.task = asyncio.create_task(self._rebuild(str(info["run_id"])))
        return True

    async def _rebuild(self, run_id: str) -> ReplaySummary:
        rate = self.settings.rebuild_rate
        log.warning(
            "Redis lost rpcache's data (no data-loss marker; server run_id %s): rebuilding from"
            " PostgreSQL at %s keys/s", run_id, rate,
        )  # fmt: skip
        await self.announce("firing", 0)
        summary = await replay(self.pool, self.redis, self.settings, rate=rate, show_progress=False)
        value = orjson.dumps({"run_id": run_id, "rebuilt_at": datetime.now(UTC).isoformat()})
        await self.redis.set(LOADED_MARKER_KEY, value, ex=LOADED_MARKER_TTL)
        self.rebuilds += 1
        log.warning("Redis rebuild finished: %s", summary.line())
        await self.announce("resolved", sum(summary.written.values()))
        return summary
