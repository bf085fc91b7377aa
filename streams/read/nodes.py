"""Which node answers a read: the replica where that is safe, else the master,
each under its own circuit breaker.

`RedisNodes.read` is the Redis side of every read: it finds the key's shard
(the target's master and replicas, or on a cluster the master serving the
key's slot and its replicas: `Route.shard_for`), takes a slot of the target,
tries the family's replica (if any) and then the master, reports each round
trip's outcome to that node's breaker, and says when PostgreSQL must answer
instead. Only failures Redis caused (`clients.REDIS_FAILED`) count against a
breaker; an error about the request, or a budget run out while this process
was late, sends the read to PostgreSQL without blaming the node ("What is
Redis's fault" in `streams.read.reader`).
"""

from __future__ import annotations

import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Generic, NamedTuple, TypeVar

import redis.exceptions as redis_errors

from streams.read.breaker import BreakerState, CircuitBreaker, Permit
from streams.read.budget import OVERLOAD_GRACE_S, ProcessLateError, within_budget
from streams.read.clients import REDIS_FAILED, Fetch
from streams.read.results import Node
from streams.read.routes import Route, Shard
from streams.read.stats import Counters
from streams.redis_targets import KeyFamily

log = logging.getLogger("streams.read.reader")
"""The reader's logger, by the name services and `rpcache bench` set its level with."""

V = TypeVar("V")
T = TypeVar("T")

OVERLOAD_LOG_EVERY_S: Final = 10.0
"""At most one warning this often about overloaded reads (with their count so far)."""


class Served(NamedTuple, Generic[V]):
    """What Redis said about a key, and where."""

    value: V | None
    """The entry, or None: Redis answered that the key is absent."""
    node: Node
    shard: str | None
    """`host:port` of the cluster master whose slots hold the key (it or one of its
    replicas answered); None for one Redis or a Sentinel set."""


class _Outcome(enum.Enum):
    NEXT_NODE = "next node"
    """The node failed: the next node (a replica's master), else PostgreSQL."""
    POSTGRES = "postgres"
    """PostgreSQL answers now: a live node answered an error about the request, or
    this process was too late to look for the answer (`stats.overloaded`)."""


class RedisNodes:
    """The Redis side of a reader's reads (one per reader: it shares its counters)."""

    def __init__(self, budget_s: float, counts: Counters) -> None:
        self._budget_s = budget_s
        self._counts = counts
        self._overload_logged_at = -OVERLOAD_LOG_EVERY_S

    async def read(
        self, route: Route, family: KeyFamily, key: str, fetch: Fetch[V]
    ) -> Served[V] | None:
        """What Redis holds for the SPEC §4 key `key` (read at the key stored for it,
        `ReadTarget.stored`) and the node that said so; None when PostgreSQL must
        answer (the key's shard's breakers are open, or its nodes failed; on a
        cluster also: no master serves the key's slot, or its slot map cannot be
        read)."""
        stored = route.target.stored(key)
        slot_map = route.target.slot_map
        replica = route.replica_for(family)
        shard = route.shard_for(stored)
        if shard is None:
            if route.breaker.blocked:
                return None  # the slot map cannot be read now: do not queue
        elif shard.breaker.blocked and (replica is None or shard.replica_breaker.blocked):
            return None  # nothing to wait for: do not queue
        await route.take_slot(self._counts)
        try:
            if shard is None:
                shard = await self._learn(route, stored)
                if shard is None:
                    return None
            if replica is not None and slot_map is not None and not slot_map.replicated(stored):
                replica = None  # a shard without replicas: its master serves the read
            if replica is not None:
                permit = shard.replica_breaker.acquire()
                if permit is not None:
                    read = functools.partial(fetch, replica, stored)
                    got = await self._attempt(route, shard, "replica", permit, read, stored)
                    if got is _Outcome.POSTGRES:
                        return None
                    if got is not _Outcome.NEXT_NODE:
                        return Served(got, "replica", shard.address)
            permit = shard.breaker.acquire()
            if permit is None:
                return None
            read = functools.partial(fetch, route.target.master, stored)
            got = await self._attempt(route, shard, "master", permit, read, stored)
            if isinstance(got, _Outcome):
                return None
            if replica is not None:
                self._counts.replica_fallbacks += 1
            return Served(got, "master", shard.address)
        finally:
            route.release_slot()

    async def _learn(self, route: Route, stored: str) -> Shard | None:
        """A cluster target's slot map read (again) under the target's own breaker, so
        that `stored`'s shard is known; None when it cannot be (PostgreSQL answers)."""
        slot_map = route.target.slot_map
        permit = None if slot_map is None else route.breaker.acquire()
        if slot_map is None or permit is None:
            return None
        learn = functools.partial(slot_map.learn, stored)
        if isinstance(
            await self._attempt(route, route.main, "master", permit, learn, stored), _Outcome
        ):
            return None
        return route.shard_for(stored)

    async def _attempt(
        self,
        route: Route,
        shard: Shard,
        node: Node,
        permit: Permit,
        call: Callable[[], Awaitable[T]],
        key: str,
    ) -> T | _Outcome:
        """One round trip to one node, its outcome reported to that node's breaker."""
        breaker = shard.breaker_of(node)
        before = breaker.state
        try:
            value = await within_budget(call, self._budget_s, self._counts)
        except ProcessLateError:
            self._counts.overloaded += 1
            breaker.release(permit)
            self._log_overload(shard, node)
            return _Outcome.POSTGRES
        except REDIS_FAILED as exc:
            self._counts.redis_errors += 1
            breaker.failure(permit)
            _log_transition(shard, node, breaker, before, exc)
            if route.target.slot_map is not None and shard is not route.main:
                route.target.slot_map.refresh_soon()  # a failover may have moved the slot
            return _Outcome.NEXT_NODE
        except redis_errors.RedisError as exc:
            self._counts.redis_errors += 1
            breaker.success(permit)
            _log_transition(shard, node, breaker, before, exc)
            log.warning("redis refused reading %s (%s); reading PostgreSQL", key, exc)
            return _Outcome.POSTGRES
        except BaseException:
            breaker.release(permit)
            raise
        breaker.success(permit)
        _log_transition(shard, node, breaker, before, None)
        return value

    def _log_overload(self, shard: Shard, node: Node) -> None:
        """At most one line per OVERLOAD_LOG_EVERY_S: an overloaded process must not
        also flood its log."""
        now = time.monotonic()
        if now - self._overload_logged_at < OVERLOAD_LOG_EVERY_S:
            return
        self._overload_logged_at = now
        log.warning(
            "reading from %s (%s): no answer %.1f s past the budget while this process's "
            "event loop was too late to look; PostgreSQL answers, Redis is not blamed "
            "(%d such reads so far: the process is over its capacity)",
            shard.name,
            node,
            OVERLOAD_GRACE_S,
            self._counts.overloaded,
        )


def _log_transition(
    shard: Shard,
    node: Node,
    breaker: CircuitBreaker,
    before: BreakerState,
    exc: BaseException | None,
) -> None:
    """A line when a node's breaker opened or closed (not on every round trip)."""
    after = breaker.state
    if after is before:
        return
    where = shard.name if node == "master" else f"{shard.name} replica"
    instead = "PostgreSQL" if node == "master" else "the master"
    if after is BreakerState.OPEN:
        log.warning(
            "redis circuit breaker of %s open (%r): its reads go to %s for %.1f s",
            where,
            exc,
            instead,
            breaker.reset_s,
        )
    elif after is BreakerState.CLOSED:
        log.info("redis circuit breaker of %s closed: its reads go to Redis again", where)
