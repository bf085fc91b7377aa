"""Which node answers a read: the replica where that is safe, else the master,
each under its own circuit breaker.

`RedisNodes.read` is the Redis side of every read: it takes a slot of the
target, tries the family's replica (if any) and then the master, reports each
round trip's outcome to that node's breaker, and says when PostgreSQL must
answer instead. Only failures Redis caused (`clients.REDIS_FAILED`) count
against a breaker; an error about the request, or a budget run out while this
process was late, sends the read to PostgreSQL without blaming the node
("What is Redis's fault" in `streams.read.reader`).
"""

from __future__ import annotations

import enum
import functools
import logging
import time
from typing import Final, TypeVar

import redis.exceptions as redis_errors
from redis.asyncio import Redis

from streams.read.breaker import BreakerState, CircuitBreaker, Permit
from streams.read.budget import OVERLOAD_GRACE_S, ProcessLateError, within_budget
from streams.read.clients import REDIS_FAILED, Fetch
from streams.read.results import Node
from streams.read.routes import Route
from streams.read.stats import Counters
from streams.redis_targets import KeyFamily

log = logging.getLogger("streams.read.reader")
"""The reader's logger, by the name services and `rpcache bench` set its level with."""

V = TypeVar("V")

OVERLOAD_LOG_EVERY_S: Final = 10.0
"""At most one warning this often about overloaded reads (with their count so far)."""


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
    ) -> tuple[V | None, Node] | None:
        """What Redis holds for `key` and the node that said so; None when PostgreSQL
        must answer (the target's breakers are open, or its nodes failed)."""
        replica = route.replica_for(family)
        if route.breaker.blocked and (replica is None or route.replica_breaker.blocked):
            return None  # nothing to wait for: do not queue
        await route.take_slot(self._counts)
        try:
            if replica is not None:
                permit = route.replica_breaker.acquire()
                if permit is not None:
                    got = await self._attempt(route, "replica", permit, replica, fetch, key)
                    if got is _Outcome.POSTGRES:
                        return None
                    if got is not _Outcome.NEXT_NODE:
                        return got, "replica"
            permit = route.breaker.acquire()
            if permit is None:
                return None
            got = await self._attempt(route, "master", permit, route.target.master, fetch, key)
            if isinstance(got, _Outcome):
                return None
            if replica is not None:
                self._counts.replica_fallbacks += 1
            return got, "master"
        finally:
            route.release_slot()

    async def _attempt(
        self, route: Route, node: Node, permit: Permit, client: Redis, fetch: Fetch[V], key: str
    ) -> V | _Outcome | None:
        """One round trip to one node, its outcome reported to that node's breaker."""
        breaker = route.breaker_of(node)
        before = breaker.state
        try:
            call = functools.partial(fetch, client, key)
            value = await within_budget(call, self._budget_s, self._counts)
        except ProcessLateError:
            self._counts.overloaded += 1
            breaker.release(permit)
            self._log_overload(route, node)
            return _Outcome.POSTGRES
        except REDIS_FAILED as exc:
            self._counts.redis_errors += 1
            breaker.failure(permit)
            _log_transition(route, node, breaker, before, exc)
            return _Outcome.NEXT_NODE
        except redis_errors.RedisError as exc:
            self._counts.redis_errors += 1
            breaker.success(permit)
            _log_transition(route, node, breaker, before, exc)
            log.warning("redis refused reading %s (%s); reading PostgreSQL", key, exc)
            return _Outcome.POSTGRES
        except BaseException:
            breaker.release(permit)
            raise
        breaker.success(permit)
        _log_transition(route, node, breaker, before, None)
        return value

    def _log_overload(self, route: Route, node: Node) -> None:
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
            route.target.name,
            node,
            OVERLOAD_GRACE_S,
            self._counts.overloaded,
        )


def _log_transition(
    route: Route,
    node: Node,
    breaker: CircuitBreaker,
    before: BreakerState,
    exc: BaseException | None,
) -> None:
    """A line when a node's breaker opened or closed (not on every round trip)."""
    after = breaker.state
    if after is before:
        return
    where = route.target.name if node == "master" else f"{route.target.name} replica"
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
