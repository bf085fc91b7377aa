"""Which Redis topology the integration run uses, and a view of its keys by family.

`RPCACHE_REDIS_TOPOLOGY` chooses (README, Tests):

- `single` (the default, `make test`): every key family on REDIS_URL's db 15;
- `sentinel` (`make test-sentinel`): the shared worker's families on the local
  Sentinel topology (`rpcache stack up --redis sentinel`), db `SENTINEL_DB` of
  each family's master/replica set; an isolated run's families move to its
  own db number there (test_caches' stats run: 14). The sentinel tests use
  dbs 3 and 4, the sentinel chaos tests 5-7, `rpcache stack env` 0.

Only modules that set `REDIS_TOPOLOGIES = ("single", "sentinel")` run under
`sentinel` (tests/integration/conftest.py skips the others: they check keys
on REDIS_URL). They read and write keys through `RedisKeys`, which sends each
key to its family's master (`streams.redis_targets.key_family`), and wait for
the replicas (`RedisKeys.replicated`) where a replica read follows.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.redis_targets import RedisTargets
from streams.settings import Settings

Topology = Literal["single", "sentinel"]
TOPOLOGY_ENV: Final = "RPCACHE_REDIS_TOPOLOGY"
SENTINEL_DB: Final = 8
"""The shared worker's db on every node of the sentinel topology (no other test uses it)."""
FAMILY_URL_VARS: Final = ("REDIS_SESSIONS_URL", "REDIS_AI_URL", "REDIS_VOICE_URL")
SYNC_CHANNEL: Final = f"rpcache-test-sync-{uuid.uuid4().hex[:8]}"


def redis_topology() -> Topology:
    """The topology this run asked for; ValueError for an unknown one."""
    value = os.environ.get(TOPOLOGY_ENV, "").strip() or "single"
    if value not in get_args(Topology):
        raise ValueError(f"{TOPOLOGY_ENV}={value!r}: use one of {', '.join(get_args(Topology))}")
    return cast(Topology, value)


def with_target_db(url: str, db: int) -> str:
    """A target URL (redis://…/db or redis+sentinel://…/master/db) on another db."""
    parts = urlsplit(url)
    if parts.scheme.endswith("+sentinel"):
        master = next(p for p in parts.path.split("/") if p)
        return urlunsplit(parts._replace(path=f"/{master}/{db}"))
    return urlunsplit(parts._replace(path=f"/{db}"))


class RedisKeys:
    """This run's Redis keys, each read and written on its family's master.

    With one Redis every family is on the same client; on the sentinel topology
    a key is looked up where the worker wrote it (`RedisTargets.master_for`), so
    a key on the wrong family's target is not found. Commands of several keys
    are split by target.
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

    def on(self, key: str) -> Redis:
        """The master of `key`'s family."""
        return self.targets.master_for(key)

    def _by_target(self, keys: tuple[str, ...]) -> list[tuple[Redis, list[str]]]:
        groups: dict[int, tuple[Redis, list[str]]] = {}
        for key in keys:
            client = self.on(key)
            groups.setdefault(id(client), (client, []))[1].append(key)
        return list(groups.values())

    async def exists(self, *keys: str) -> int:
        return sum([int(await client.exists(*group)) for client, group in self._by_target(keys)])

    async def delete(self, *keys: str) -> int:
        return sum([int(await client.delete(*group)) for client, group in self._by_target(keys)])

    async def get(self, key: str) -> str | None:
        return cast(str | None, await self.on(key).get(key))

    async def hget(self, key: str, field: str) -> str | None:
        return cast(str | None, await self.on(key).hget(key, field))

    async def hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self.on(key).hgetall(key))

    async def type(self, key: str) -> str:
        return cast(str, await self.on(key).type(key))

    async def ttl(self, key: str) -> int:
        return int(await self.on(key).ttl(key))

    async def pttl(self, key: str) -> int:
        return int(await self.on(key).pttl(key))

    async def zscores(self, key: str) -> dict[str, float]:
        """Every member of a sorted set with its score."""
        members = await self.on(key).zrange(key, 0, -1, withscores=True)
        return dict(cast(list[tuple[str, float]], members))

    async def zcard(self, key: str) -> int:
        return int(await self.on(key).zcard(key))

    async def flushdb(self) -> None:
        """Empty this run's db on every distinct target."""
        for _, client in self.targets.distinct():
            await client.flushdb()

    async def replicated(self, timeout_ms: int = 5000) -> None:
        """Until every replica of every target has all its master wrote so far.

        A PUBLISH is replicated like a write but leaves no key; WAIT on the same
        connection then returns once the replicas acknowledged it, so everything
        the master wrote before it (the worker's writes, a test's deletes) too.
        A single Redis has no replica: nothing to wait for.
        """
        for families, client in self.targets.distinct():
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


def family_env(base: dict[str, str], db: int) -> dict[str, str]:
    """`base`'s own family targets (the sentinel run's) moved to `db`; {} when it has none."""
    return {name: with_target_db(base[name], db) for name in FAMILY_URL_VARS if name in base}
