"""Notice that Redis lost its data and rebuild it from PostgreSQL, gradually.

A data-loss marker key (`rpcache:loaded`, refreshed on every check) is present for
as long as Redis holds the projection. A restart with an empty dataset, a
failover to an empty replica or a FLUSHALL all remove it; the leader worker
then runs replay at REBUILD_RATE keys per second (live caches first, most
used entries first), announces start and end on the alerts topic and in the
log, and sets the marker again with the server's run_id. Reads keep being
served from PostgreSQL (read-through) for whatever is not back yet.

On a Redis Cluster target the marker exists once per master (SPEC §8: rpcache's
own keys carry a tag landing on that master, `schemas.keys.own_key` of the
first range it serves), and each master is checked on its own node. A master
whose marker is gone (restarted empty, its replica synced to the empty set, a
FLUSHALL on it) is rebuilt for its slots only: replay of the target's
families, writing only the keys whose stored key (`RedisTargets.key`) hashes
to a slot that master served when its loss was noticed; the other masters
are not written. A live reshard that moves the slot of a master's marker
away makes that master look empty: it is rebuilt once (harmless: values are
absolute), and `rpcache check` reports the reshard.

A fresh start is not a loss. With a new Redis and a new database, the marker
is absent as well, and the first check (the leader's timer, a few seconds
after the agents began) would "rebuild" what the worker has just projected
and raise the rebuild alert. So at start, before the agents consume, every
worker with AUTO_REBUILD on (the marker is the rebuild's) calls
`mark_fresh`: when PostgreSQL holds nothing any key is computed from, the
marker is set wherever it is missing (SET NX), and nothing is replayed. Any
row in PostgreSQL leaves the decision to the check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import orjson
from redis.asyncio import Redis, RedisCluster

from schemas.keys import LOADED_MARKER_KEY, LOADED_MARKER_TTL, own_key
from schemas.slots import key_slot
from streams.cluster_masters import ClusterMaster, cluster_masters, format_ranges
from streams.read.recompute import KEY_KINDS, KeyFilter
from streams.read.replay import ReplaySummary, replay
from streams.redis_targets import REPLAY_KINDS, KeyFamily, RedisTargets, as_targets
from streams.settings import Settings
from streams.store import reads

log = logging.getLogger(__name__)

Announce = Callable[[str, float], Awaitable[None]]
"""(state "firing"|"resolved", keys written so far) → publish the alert."""

WatchKey = tuple[tuple[KeyFamily, ...], str]
"""A target's families and, on a cluster, one master's `host:port` ("" otherwise)."""


def marker_key(master: ClusterMaster) -> str:
    """The data-loss marker of one master of a cluster: `rpcache:{r…}:loaded`, tagged
    into the first slot range it serves (`own_key`), so it is stored on it."""
    return own_key(LOADED_MARKER_KEY, master.slots.slots[0])


class RedisWatch:
    """Checks the data-loss marker of every Redis target (every master of a cluster);
    rebuilds only what a target, or a master, lost.

    SPEC §8: each family of keys has a target, and the marker is one of
    rpcache's own keys, so it exists once per distinct target and once per
    master of a cluster. A voice master restarted empty (and its replica synced
    to the empty set) is rebuilt for the voice family only, most used clips
    first, while the other targets' keys are left alone; a cluster master for
    its slots only. At most one rebuild runs per target (per master) at a time.
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
        self.tasks: dict[WatchKey, asyncio.Task[ReplaySummary]] = {}
        self.rebuilds = 0

    @property
    def rebuilding(self) -> bool:
        return any(not task.done() for task in self.tasks.values())

    @property
    def task(self) -> asyncio.Task[ReplaySummary] | None:
        """The latest rebuild task (of any target)."""
        return next(reversed(self.tasks.values()), None)

    def _busy(self, key: WatchKey) -> bool:
        running = self.tasks.get(key)
        return running is not None and not running.done()

    async def check(self) -> bool:
        """Refresh each target's marker (each master's, on a cluster), or start that
        target's (those masters') rebuild when it is gone.

        True if a rebuild started. A target or master that does not answer
        raises after the others were checked (the timer logs it and looks again).
        """
        started = False
        failure: BaseException | None = None
        for families, client in self.targets.distinct():
            try:
                if isinstance(client, RedisCluster):
                    started = await self._check_cluster(families, client) or started
                else:
                    started = await self._check_single(families, client) or started
            except Exception as exc:  # this target is away; the others are still checked
                failure = failure or exc
        if failure is not None:
            raise failure
        return started

    async def _check_single(self, families: tuple[KeyFamily, ...], client: Redis) -> bool:
        if self._busy((families, "")):
            return False
        if await client.expire(LOADED_MARKER_KEY, LOADED_MARKER_TTL):
            return False
        info = await client.info("server")
        self.tasks[(families, "")] = asyncio.create_task(
            self._rebuild(families, client, str(info["run_id"]))
        )
        return True

    async def _check_cluster(self, families: tuple[KeyFamily, ...], cluster: RedisCluster) -> bool:
        """Each master's marker, asked of that master alone (no redirect, no retry); the
        masters without one are rebuilt together, for their slots only."""
        lost: list[tuple[ClusterMaster, str]] = []
        failure: BaseException | None = None
        for master in await cluster_masters(cluster):
            if self._busy((families, master.name)):
                continue
            try:
                ttl = int(LOADED_MARKER_TTL.total_seconds())
                if await cluster.execute_command(
                    "EXPIRE", marker_key(master), ttl, target_nodes=master.node
                ):
                    continue
                info = await cluster.info("server", target_nodes=master.node)
            except Exception as exc:  # this master is away; the others are still checked
                failure = failure or exc
                continue
            lost.append((master, str(info["run_id"])))
        if lost:
            task = asyncio.create_task(self._rebuild_masters(families, cluster, lost))
            for master, _ in lost:
                self.tasks[(families, master.name)] = task
        if failure is not None:
            raise failure
        return bool(lost)

    async def mark_fresh(self) -> bool:
        """Set each target's marker (each master's, on a cluster) where it is missing,
        if PostgreSQL holds nothing a key is computed from; True if it did (module
        docstring). Raises what asyncpg or redis-py raise; the worker then logs it and
        leaves the decision to the leader's check.

        Accepted gap: another worker's first batch could commit and be projected
        between the probe and the SET, and Redis lose it in those milliseconds; the
        marker would then hide that loss until the key's own write comes again."""
        async with self.pool.acquire() as conn:
            if not await reads.nothing_to_project(conn):
                return False
        for _, client in self.targets.distinct():
            if isinstance(client, RedisCluster):
                for master in await cluster_masters(cluster=client):
                    info = await client.info("server", target_nodes=master.node)
                    await client.set(
                        marker_key(master),
                        self._marker(str(info["run_id"])),
                        ex=LOADED_MARKER_TTL,
                        nx=True,
                    )
            else:
                info = await client.info("server")
                await client.set(
                    LOADED_MARKER_KEY,
                    self._marker(str(info["run_id"])),
                    ex=LOADED_MARKER_TTL,
                    nx=True,
                )
        return True

    def _kinds(self, families: tuple[KeyFamily, ...]) -> list[str]:
        kinds = {kind for family in families for kind in REPLAY_KINDS[family]}
        return [k for k in KEY_KINDS if k in kinds]

    async def _replay(
        self, families: tuple[KeyFamily, ...], keep: KeyFilter | None = None
    ) -> ReplaySummary:
        await self.announce("firing", 0)
        return await replay(
            self.pool,
            self.targets,
            self.settings,
            kinds=self._kinds(families),
            rate=self.settings.rebuild_rate,
            show_progress=False,
            keep=keep,
        )

    def _marker(self, run_id: str) -> bytes:
        return orjson.dumps({"run_id": run_id, "rebuilt_at": datetime.now(UTC).isoformat()})

    async def _done(self, what: str, summary: ReplaySummary) -> ReplaySummary:
        self.rebuilds += 1
        log.warning("Redis rebuild of %s finished: %s", what, summary.line())
        await self.announce("resolved", sum(summary.written.values()))
        return summary

    async def _rebuild(
        self, families: tuple[KeyFamily, ...], client: Redis, run_id: str
    ) -> ReplaySummary:
        log.warning(
            "Redis target of %s lost rpcache's data (no data-loss marker; server run_id %s):"
            " rebuilding %s from PostgreSQL at %s keys/s",
            "/".join(families), run_id, ", ".join(self._kinds(families)),
            self.settings.rebuild_rate,
        )  # fmt: skip
        summary = await self._replay(families)
        await client.set(LOADED_MARKER_KEY, self._marker(run_id), ex=LOADED_MARKER_TTL)
        return await self._done("/".join(families), summary)

    async def _rebuild_masters(
        self,
        families: tuple[KeyFamily, ...],
        cluster: RedisCluster,
        lost: list[tuple[ClusterMaster, str]],
    ) -> ReplaySummary:
        """Replay the target's families, writing only the keys stored in the slots the
        lost masters serve; then set each one's marker (routed by its slot)."""
        slots = frozenset(
            slot for master, _ in lost for r in master.slots.slots for slot in range(r.lo, r.hi + 1)
        )
        targets = self.targets

        def keep(key: str) -> bool:
            return key_slot(targets.key(key)) in slots

        where = "; ".join(
            f"master {m.name} (slots {format_ranges(m.slots.slots)}, server run_id {run_id})"
            for m, run_id in lost
        )
        log.warning(
            "Redis target of %s lost rpcache's data on %s (no data-loss marker): rebuilding"
            " %s from PostgreSQL for those slots only at %s keys/s",
            "/".join(families), where, ", ".join(self._kinds(families)),
            self.settings.rebuild_rate,
        )  # fmt: skip
        summary = await self._replay(families, keep)
        for master, run_id in lost:
            await cluster.set(marker_key(master), self._marker(run_id), ex=LOADED_MARKER_TTL)
        names = ", ".join(m.name for m, _ in lost)
        return await self._done(f"{'/'.join(families)} on {names}", summary)
