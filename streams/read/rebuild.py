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
from streams.read.recompute import KEY_KINDS
from streams.read.replay import ReplaySummary, replay
from streams.redis_targets import REPLAY_KINDS, KeyFamily, RedisTargets, as_targets
from streams.settings import Settings

log = logging.getLogger(__name__)

Announce = Callable[[str, float], Awaitable[None]]
"""(state "firing"|"resolved", keys written so far) → publish the alert."""


class RedisWatch:
    """Checks the data-loss marker of every Redis target; rebuilds only what a target lost.

    SPEC §8: each family of keys has a target, and the marker is one of
    rpcache's own keys, so it exists once per distinct target. A voice master
    restarted empty (and its replica synced to the empty set) is rebuilt for
    the voice family only, most used clips first, while the other targets'
    keys are left alone. At most one rebuild runs per target at a time.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis | RedisTargets,
        settings: Settings,
        announce: Announce,
    ) -> None:
        self.pool = pool
        self.targets = as_targets(redis)
        self.settings = settings
        self.announce = announce
        self.tasks: dict[tuple[KeyFamily, ...], asyncio.Task[ReplaySummary]] = {}
        self.rebuilds = 0

    @property
    def rebuilding(self) -> bool:
        return any(not task.done() for task in self.tasks.values())

    @property
    def task(self) -> asyncio.Task[ReplaySummary] | None:
        """The latest rebuild task (of any target)."""
        return next(reversed(self.tasks.values()), None)

    async def check(self) -> bool:
        """Refresh each target's marker, or start that target's rebuild when it is gone.

        True if a rebuild started. A target that does not answer raises after
        the others were checked (the timer logs it and looks again).
        """
        started = False
        failure: BaseException | None = None
        for families, client in self.targets.distinct():
            running = self.tasks.get(families)
            if running is not None and not running.done():
                continue
            try:
                if await client.expire(LOADED_MARKER_KEY, LOADED_MARKER_TTL):
                    continue
                info = await client.info("server")
            except Exception as exc:  # this target is away; the others are still checked
                failure = failure or exc
                continue
            self.tasks[families] = asyncio.create_task(
                self._rebuild(families, client, str(info["run_id"]))
            )
            started = True
        if failure is not None:
            raise failure
        return started

    async def _rebuild(
        self, families: tuple[KeyFamily, ...], client: Redis, run_id: str
    ) -> ReplaySummary:
        rate = self.settings.rebuild_rate
        kinds = [kind for family in families for kind in REPLAY_KINDS[family]]
        log.warning(
            "Redis target of %s lost rpcache's data (no data-loss marker; server run_id %s):"
            " rebuilding %s from PostgreSQL at %s keys/s",
            "/".join(families), run_id, ", ".join(kinds), rate,
        )  # fmt: skip
        await self.announce("firing", 0)
        summary = await replay(
            self.pool,
            self.targets,
            self.settings,
            kinds=[k for k in KEY_KINDS if k in kinds],
            rate=rate,
            show_progress=False,
        )
        value = orjson.dumps({"run_id": run_id, "rebuilt_at": datetime.now(UTC).isoformat()})
        await client.set(LOADED_MARKER_KEY, value, ex=LOADED_MARKER_TTL)
        self.rebuilds += 1
        log.warning("Redis rebuild of %s finished: %s", "/".join(families), summary.line())
        await self.announce("resolved", sum(summary.written.values()))
        return summary
