"""Which Redis topology the integration run uses, and a view of its keys by family.

`RPCACHE_REDIS_TOPOLOGY` chooses (README, Tests):

- `single` (the default, `make test`): every key family on REDIS_URL's db 15;
- `sentinel` (`make test-sentinel`): the shared worker's families on the local
  Sentinel topology (`rpcache stack up --redis sentinel`), db `SENTINEL_DB` of
  each family's master/replica set; an isolated run's families move to its
  own db number there (test_caches' stats run: 14). The sentinel tests use
  dbs 3 and 4, the sentinel chaos tests 5-7, `rpcache stack env` 0.
- `cluster` and `cluster-design` (`make test-cluster`): every family on the
  local Redis Cluster (`rpcache stack up --redis cluster`), with
  REDIS_CLUSTER_LAYOUT `hash` and `design` respectively. A cluster has db 0
  only, so nothing moves to a db of its own: the session holds
  `streams.tools.stack.cluster.cluster_lock` (one user of the cluster at a time), the masters
  are flushed (FLUSHALL on each) when it starts and ends, an isolated run
  shares the cluster with the shared worker (its keys are its own by
  session and user ids; the day's stats and the metrics keys are not:
  `conftest.alone_on_shared_keys`).

Only modules that list the topology in `REDIS_TOPOLOGIES` run under it
(tests/integration/conftest.py skips the others: they check keys on
REDIS_URL). They read and write keys through `RedisKeys`, which sends each
key to its family's master (`streams.redis_targets.key_family`) at the key
stored for it there (`RedisTargets.key`: the design layout's tagged key on a
`cluster-design` run), and wait for the replicas (`RedisKeys.replicated`)
where a replica read follows.
"""

from __future__ import annotations

import fnmatch
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.keys import ClusterLayout, logical_key
from streams.cluster_masters import wait_replicated
from streams.redis_targets import Client, RedisTargets, parse_target
from streams.settings import Settings

Topology = Literal["single", "sentinel", "cluster", "cluster-design"]
TOPOLOGY_ENV: Final = "RPCACHE_REDIS_TOPOLOGY"
SENTINEL_DB: Final = 8
"""The shared worker's db on every node of the sentinel topology (no other test uses it)."""
CLUSTER_LAYOUTS: Final[dict[Topology, ClusterLayout]] = {
    "cluster": "hash",
    "cluster-design": "design",
}
"""REDIS_CLUSTER_LAYOUT of each cluster topology."""
FAMILY_URL_VARS: Final = ("REDIS_SESSIONS_URL", "REDIS_AI_URL", "REDIS_VOICE_URL")
SYNC_CHANNEL: Final = f"rpcache-test-sync-{uuid.uuid4().hex[:8]}"


def redis_topology() -> Topology:
    """The topology this run asked for; ValueError for an unknown one."""
    value = os.environ.get(TOPOLOGY_ENV, "").strip() or "single"
    if value not in get_args(Topology):
        raise ValueError(f"{TOPOLOGY_ENV}={value!r}: use one of {', '.join(get_args(Topology))}")
    return cast(Topology, value)


def cluster_layout(topology: Topology) -> ClusterLayout | None:
    """The key layout of a cluster topology; None for one that is not a cluster."""
    return CLUSTER_LAYOUTS.get(topology)


def with_target_db(url: str, db: int) -> str:
    """A target URL (redis://…/db or redis+sentinel://…/master/db) on another db."""
    parts = urlsplit(url)
    if parts.scheme.endswith("+sentinel"):
        master = next(p for p in parts.path.split("/") if p)
        return urlunsplit(parts._replace(path=f"/{master}/{db}"))
    return urlunsplit(parts._replace(path=f"/{db}"))


class RedisKeys:
    """This run's Redis keys, each read and written on its family's master.

    Every method takes SPEC §4 keys. With one Redis every family is on the same
    client; on the sentinel topology a key is looked up where the worker wrote
    it (`RedisTargets.master_for`), so a key on the wrong family's target is
    not found; on a cluster, redis-py's `RedisCluster` sends it to the master
    of its slot, at the key stored for it (`stored`: the design layout's tagged
    key under REDIS_CLUSTER_LAYOUT=design), so a key written untagged is not
    found either. Commands of several keys are split by target (and by
    redis-py per slot on a cluster).
    """

    def __init__(self, targets: RedisTargets) -> None:
        self.targets = targets

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisKeys:
        """Clients that reconnect by themselves, like `conftest.test_redis`'s."""
        return cls(
            RedisTargets.from_settings(
                settings,
                decode_responses=True,
                socket_timeout=5,
                retry=Retry(ExponentialBackoff(cap=1.0), retries=20),
                retry_on_error=[RedisConnectionError],
            )
        )

    def on(self, key: str) -> Client:
        """The master of `key`'s family (a whole cluster's client for a cluster target)."""
        return self.targets.master_for(key)

    def stored(self, key: str) -> str:
        """The key stored for the SPEC §4 key `key` on its family's target."""
        return self.targets.key(key)

    async def master_of(self, key: str) -> str | None:
        """On a cluster target, `host:port` of the master whose slots hold `key`'s stored
        key now (its own client's slot map); None for any other target."""
        client = self.on(key)
        if not isinstance(client, RedisCluster):
            return None
        await client.initialize()
        node = client.get_node_from_key(self.stored(key))
        return None if node is None else str(node.name)

    def _by_target(self, keys: tuple[str, ...]) -> list[tuple[Client, list[str]]]:
        groups: dict[int, tuple[Client, list[str]]] = {}
        for key in keys:
            client = self.on(key)
            groups.setdefault(id(client), (client, []))[1].append(self.stored(key))
        return list(groups.values())

    async def exists(self, *keys: str) -> int:
        return sum([int(await client.exists(*group)) for client, group in self._by_target(keys)])

    async def delete(self, *keys: str) -> int:
        return sum([int(await client.delete(*group)) for client, group in self._by_target(keys)])

    async def get(self, key: str) -> str | None:
        return cast(str | None, await self.on(key).get(self.stored(key)))

    async def hget(self, key: str, field: str) -> str | None:
        return cast(str | None, await self.on(key).hget(self.stored(key), field))

    async def hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self.on(key).hgetall(self.stored(key)))

    async def type(self, key: str) -> str:
        return cast(str, await self.on(key).type(self.stored(key)))

    async def ttl(self, key: str) -> int:
        return int(await self.on(key).ttl(self.stored(key)))

    async def pttl(self, key: str) -> int:
        return int(await self.on(key).pttl(self.stored(key)))

    async def zscores(self, key: str) -> dict[str, float]:
        """Every member of a sorted set with its score."""
        members = await self.on(key).zrange(self.stored(key), 0, -1, withscores=True)
        return dict(cast(list[tuple[str, float]], members))

    async def zcard(self, key: str) -> int:
        return int(await self.on(key).zcard(self.stored(key)))

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        """Every key of every distinct target (each master of a cluster) whose SPEC §4
        key matches the glob `pattern` (Redis's `*`, `?`, `[…]`), as that SPEC §4 key.

        Stored keys are turned back with `logical_key`; a key that is not one of
        the layout's (written by another rule) is matched and returned as stored,
        so a listing never hides it. Off a cluster, where stored keys are the
        SPEC §4 keys, the pattern is sent to Redis (SCAN MATCH); on a cluster
        (where even the `hash` layout tags rpcache's own keys per master) every
        key is fetched and matched here.
        """
        for families, client in self.targets.distinct():
            layout = self.targets.layouts[families[0]]
            if isinstance(client, RedisCluster):
                found = client.scan_iter(target_nodes=RedisCluster.PRIMARIES)
            else:
                found = client.scan_iter(match=pattern)
            async for stored in found:
                key = _logical_or_stored(str(stored), layout)
                if fnmatch.fnmatchcase(key, pattern):
                    yield key

    async def flushdb(self) -> None:
        """Empty this run's db on every distinct target; on a cluster (db 0 only), every
        key of every master (FLUSHALL on each: `cluster_lock`)."""
        for _, client in self.targets.distinct():
            if isinstance(client, RedisCluster):
                await client.flushall(target_nodes=RedisCluster.PRIMARIES)
            else:
                await client.flushdb()

    async def replicated(self, timeout_ms: int = 5000) -> None:
        """Until every replica of every target has all its master wrote so far.

        A PUBLISH is replicated like a write but leaves no key; WAIT on the same
        connection then returns once the replicas acknowledged it, so everything
        the master wrote before it (the worker's writes, a test's deletes) too.
        A single Redis has no replica: nothing to wait for. On a cluster each
        master is waited for in turn (`streams.cluster_masters.wait_replicated`).
        """
        for families, client in self.targets.distinct():
            if isinstance(client, RedisCluster):
                for master, (acked, want) in (await wait_replicated(client, timeout_ms)).items():
                    assert acked >= want, f"master {master}: {acked} of {want} replicas caught up"
                continue
            if not self.targets.targets[families[0]].is_sentinel:
                continue
            info: dict[str, Any] = await client.info("replication")
            want = int(info.get("connected_slaves", 0))
            async with client.pipeline(transaction=False) as pipe:
                pipe.publish(SYNC_CHANNEL, "sync")
                pipe.execute_command("WAIT", want, timeout_ms)
                _, acked = await pipe.execute()
            assert int(acked) >= want, f"{families}: {acked} of {want} replicas caught up"

    async def aclose(self) -> None:
        await self.targets.aclose()


def _logical_or_stored(stored: str, layout: ClusterLayout) -> str:
    try:
        return logical_key(stored, layout)
    except ValueError:
        return stored


def family_env(base: dict[str, str], db: int) -> dict[str, str]:
    """`base`'s own family targets (the sentinel run's) moved to `db`; {} when it has none.

    A cluster target stays where it is (it has db 0 only): an isolated run of a
    cluster topology shares the cluster with the shared worker."""
    return {
        name: with_target_db(base[name], db)
        for name in FAMILY_URL_VARS
        if name in base and not parse_target(base[name]).is_cluster
    }
