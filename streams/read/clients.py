"""The reader's Redis clients, the two reads it sends them, and which of their
failures are Redis's fault.

The clients fail fast: no retry loop (it would spend the read's budget on a
server that is already known to be failing), no health-check round trip, and
socket timeouts past the reader's own deadline (`streams.read.budget`), as a
backstop only. A cluster target has two `RedisCluster` clients: the target's
(masters) and `cluster_replica` (replicas only).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import ReplicaNotFoundError, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import LoadBalancingStrategy

from streams.read.budget import OVERLOAD_GRACE_S
from streams.redis_targets import Client, Target, cluster_client
from streams.settings import Settings

V = TypeVar("V")

Fetch = Callable[[Client, str], Awaitable[V | None]]
"""One read of one key: the value, or None when the key is absent. The client is one
node's (`Redis`) or a cluster's (`RedisCluster`, which sends it to its slot's node)."""

REDIS_FAILED: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # refused, reset, no master/replica known, LOADING, auth
    redis_errors.TimeoutError,  # the clients' socket timeouts (a backstop)
    redis_errors.ReadOnlyError,  # READONLY: a demoted master
    redis_errors.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN (a replica cut off, serving no data)
    redis_errors.TryAgainError,
    # No node of a cluster answers, or none serves the key's slot (SlotNotCoveredError).
    redis_errors.RedisClusterException,
    TimeoutError,  # the reader's budget, run out while the loop was on time
    OSError,
)
"""Failures Redis caused: they count for the node's breaker (`streams.read.reader`,
"What is Redis's fault").

Any other `RedisError` is an answer from a live server about the request (e.g.
WRONGTYPE): that read falls back to PostgreSQL, but the breaker counts it as a
success.
"""


def socket_timeout_s(budget_s: float) -> float:
    """The clients' own socket timeouts: past any deadline of the reader (a backstop)."""
    return 2 * budget_s + OVERLOAD_GRACE_S


def client_options(budget_s: float, client_name: str | None = None) -> dict[str, Any]:
    """redis-py options of the reader's clients: no retry loop, no health-check
    round trip, socket timeouts past the reader's own deadline."""
    timeout_s = socket_timeout_s(budget_s)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if client_name:
        options["client_name"] = client_name
    return options


CLUSTER_OPTIONS: dict[str, Any] = {"require_full_coverage": False}
"""redis-py options of the reader's `RedisCluster` clients, beside `client_options`:
a slot map with a shard missing (no master, no replica) is still used for the
others' slots, as `cluster-require-full-coverage no` has the cluster serve them
(redis-py's default refuses the whole map)."""


def redis_client(
    url: str,
    timeout_s: float,
    tls: dict[str, Any] | None = None,
    client_name: str | None = None,
) -> Redis:
    """A client for one Redis that fails fast: no retry loop, no health check.

    `timeout_s`: the reader's budget (its socket timeouts are a backstop past it).
    `tls`: `security.redis_options` for `url` (CA and client certificate of a
    `rediss://` URL); the ACL user and password travel in the URL.
    """
    return Redis.from_url(url, **(tls or {}), **client_options(timeout_s, client_name))


class _ReplicaPool(SentinelConnectionPool):
    """A Sentinel-managed replica pool that never falls back to the master.

    redis-py's own pool connects to the master when no replica answers; the
    reader reads the master itself then, so it can say which node served.
    """

    async def rotate_slaves(self) -> AsyncIterator[Any]:
        replicas = await self.sentinel_manager.discover_slaves(self.service_name)
        if replicas:
            if self.slave_rr_counter is None:
                self.slave_rr_counter = random.randint(0, len(replicas) - 1)
            for _ in range(len(replicas)):
                self.slave_rr_counter = (self.slave_rr_counter + 1) % len(replicas)
                yield replicas[self.slave_rr_counter]
        raise ReplicaNotFoundError(f"no replica of {self.service_name!r} answers")


def sentinel_replica(master: Redis, target: Target) -> Redis:
    """A replica client on the same Sentinels and options as `master`."""
    pool = master.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        raise TypeError(f"not a Sentinel-managed client: {target.describe()}")
    client: Redis = pool.sentinel_manager.slave_for(
        target.master_name, connection_pool_class=_ReplicaPool
    )
    return client


def cluster_replica(
    target: Target, settings: Settings, budget_s: float, client_name: str | None = None
) -> RedisCluster:
    """A `RedisCluster` on `target`'s seeds that sends every read to a replica of the
    key's master (round robin among them: `LoadBalancingStrategy.ROUND_ROBIN_REPLICAS`;
    its connections to replicas open with READONLY), with the options of the
    reader's other clients. It reads the master only for a slot without replicas,
    which the reader checks first (`SlotMap.replicated`). No I/O here."""
    return cluster_client(
        target,
        settings,
        **client_options(budget_s, client_name),
        **CLUSTER_OPTIONS,
        load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS,
    )


async def fetch_hash(redis: Client, key: str) -> dict[str, str] | None:
    """HGETALL; an absent key is an empty hash in Redis and None here."""
    fields = await redis.hgetall(key)
    return {_text(k): _text(v) for k, v in fields.items()} or None


async def fetch_string(redis: Client, key: str) -> str | None:
    value = await redis.get(key)
    return None if value is None else _text(value)


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode()
