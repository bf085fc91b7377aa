"""A cluster target's slot map as the reader uses it: stored key → slot → the master
serving it now, and whether that master has a replica.

The reader keeps a circuit breaker per master of a cluster target ("Cluster
targets" in `streams.read.reader`). Which master a read charges is read here,
from the client that sends the read, redis-py's `RedisCluster`: the stored
key's slot (CRC16-XMODEM of its hash tag mod 16 384, `schemas.slots.key_slot`,
as Redis computes it) and the first node listed for that slot in the client's
slot map (`nodes_manager.slots_cache`, built from `CLUSTER SLOTS`: the master,
then its replicas). redis-py refreshes that map itself after MOVED and after
a node's connection failed; `refresh_soon` refreshes it also after a read ran
out of its budget on a shard, which redis-py never sees (the reader cancels
the call), so a master that hangs and is failed over is left behind.

I/O only in `learn` (within a read's budget) and the background refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import redis.exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.cluster import PRIMARY

from schemas.keys import ClusterLayout
from schemas.slots import key_slot
from streams.redis_targets import stored_key

log = logging.getLogger("streams.read.reader")

REFRESH_EVERY_S: Final = 1.0
"""Background refreshes of one target's slot map start at most this often (seconds)."""
REFRESH_TIMEOUT_S: Final = 5.0
"""Ceiling of one background refresh (seconds): each node it asks may take its
connect timeout."""

_REFRESH_FAILED: Final = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
    TimeoutError,
)


class SlotMap:
    """The slot map of one cluster target, read from its clients (no copy is kept).

    `cluster` sends the reads that must reach a master and every write-back;
    `replicas`, when given, the reads a replica may serve (a `RedisCluster` that
    reads from replicas only, `streams.read.clients.cluster_replica`). `key`
    turns a SPEC §4 key into the key stored on this cluster (`RedisTargets.key`;
    by default `layout`'s, `schemas.keys.layout_key`).
    """

    def __init__(
        self,
        cluster: RedisCluster,
        layout: ClusterLayout = "hash",
        replicas: RedisCluster | None = None,
        *,
        key: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_every_s: float = REFRESH_EVERY_S,
    ) -> None:
        self.cluster = cluster
        self.replicas = replicas
        self.layout: ClusterLayout = layout
        self._key = key
        self._clock = clock
        self._refresh_every_s = refresh_every_s
        self._refreshed_at = -refresh_every_s
        self._task: asyncio.Task[None] | None = None

    def stored(self, key: str) -> str:
        """The key stored on this cluster for the SPEC §4 key `key`."""
        if self._key is not None:
            return self._key(key)
        return key if self.layout == "hash" else stored_key(key, self.layout)

    @property
    def known(self) -> bool:
        """Whether the client has a slot map yet (it reads one on first use)."""
        return bool(self.cluster.nodes_manager.slots_cache)

    def master_of(self, stored: str) -> str | None:
        """`host:port` of the master serving `stored`'s slot in the client's slot map;
        None when the map is not known yet or no master serves the slot."""
        nodes = self.cluster.nodes_manager.slots_cache.get(key_slot(stored))
        return nodes[0].name if nodes else None

    def replicated(self, stored: str) -> bool:
        """Whether `stored`'s slot has a replica in the client's slot map."""
        nodes = self.cluster.nodes_manager.slots_cache.get(key_slot(stored))
        return nodes is not None and len(nodes) > 1

    def masters(self) -> list[str]:
        """`host:port` of every master in the client's slot map, sorted."""
        nodes = self.cluster.nodes_manager.get_nodes_by_server_type(PRIMARY)
        return sorted(node.name for node in nodes)

    async def learn(self, stored: str) -> None:
        """Read the slot map when the client has none yet (as its first command
        would), or read it again when `stored`'s slot has no master in it.

        Raises `SlotNotCoveredError` when the slot still has no master after it
        (a shard without a master or replica: with `cluster-require-full-coverage
        no`, the other slots are served), and what redis-py raises when no node
        answers (`RedisClusterException`, `ConnectionError`, `TimeoutError`).
        """
        if not self.known:
            await self.cluster.initialize()
        else:
            await self.cluster.nodes_manager.initialize()
        if self.master_of(stored) is None:
            raise redis_errors.SlotNotCoveredError(
                f"slot {key_slot(stored)} is served by no master of the cluster"
            )

    def refresh_soon(self) -> None:
        """Read the slot map again in the background (after a read failed on a shard:
        a failover may have given its slots to another master). At most one refresh
        at a time, and at most one start per `refresh_every_s`; a refresh that fails
        keeps the current map (a later failure asks again)."""
        now = self._clock()
        if self._task is not None and not self._task.done():
            return
        if now - self._refreshed_at < self._refresh_every_s:
            return
        self._refreshed_at = now
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        for client in (self.cluster, self.replicas):
            if client is None or not client.nodes_manager.slots_cache:
                continue  # a client that never read its map reads it on first use
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT_S):
                    await client.nodes_manager.initialize()
            except _REFRESH_FAILED as exc:
                log.info("refreshing a Redis Cluster slot map failed (%r); kept the last", exc)

    async def aclose(self) -> None:
        """Stop a background refresh in progress (the clients are closed by their owner)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
