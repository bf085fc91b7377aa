"""Where a read goes: each key family's Redis target, with its breakers and its slots.

A `ReadTarget` is one Redis target as the reader uses it (SPEC §8): the
master that takes every write-back and the reads that must reach it, and
maybe a replica for some families ("Replicas" in `streams.read.reader`).
Families given the same target share one `Route`: its circuit breakers and
its `max_in_flight` slots, the bounded queue of the reader's own process
("What is Redis's fault").

The breakers come in `Shard`s, one per group of nodes that fail together: a
master and its replicas, each with a breaker. One Redis or a Sentinel set is
one shard, named after the target. A cluster target has a shard per master
(named `<target>@<host:port>`, found from the key's slot: `SlotMap`), and the
target's own breaker guards only its slot map ("Cluster targets" in
`streams.read.reader`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis, RedisCluster

from schemas.keys import ClusterLayout
from streams.read.breaker import BreakerState, CircuitBreaker, worst
from streams.read.clients import (
    CLUSTER_OPTIONS,
    client_options,
    cluster_replica,
    redis_client,
    sentinel_replica,
)
from streams.read.results import Node
from streams.read.slotmap import SlotMap
from streams.read.stats import Counters
from streams.redis_targets import (
    KEY_FAMILIES,
    Client,
    KeyFamily,
    RedisTargets,
    master_label,
    target_label,
    target_urls,
)
from streams.security import redis_options
from streams.settings import Settings

MAX_IN_FLIGHT: Final = 32
"""Redis round trips one reader has in flight per target; more reads wait for a slot."""

REPLICA_READ_FAMILIES: Final[frozenset[KeyFamily]] = frozenset({"sessions"})
"""Families a Sentinel or cluster target's replicas serve (`streams.read.reader`,
"Replicas")."""


@dataclass(frozen=True, eq=False, slots=True)
class ReadTarget:
    """One Redis target as the reader uses it: where a family's reads and write-backs go."""

    name: str
    """The families it serves, joined by `+` (`voice`, `sessions+ai+voice`)."""
    master: Client
    """Reads that must reach the master, and every write-back. A cluster's is
    redis-py's `RedisCluster`, which sends each key to the master of its slot."""
    replica: Client | None = None
    """A cluster's: a `RedisCluster` reading from replicas (`clients.cluster_replica`)."""
    replica_families: frozenset[KeyFamily] = frozenset()
    """Families read from `replica` (when it answers)."""
    slot_map: SlotMap | None = None
    """A cluster target's slot map and key layout; None for one Redis or a Sentinel set."""

    @property
    def layout(self) -> ClusterLayout:
        """REDIS_CLUSTER_LAYOUT on a cluster target; `hash` (keys as they are) otherwise."""
        return "hash" if self.slot_map is None else self.slot_map.layout

    def stored(self, key: str) -> str:
        """The key stored on this target for the SPEC §4 key `key` (`RedisTargets.key`)."""
        return key if self.slot_map is None else self.slot_map.stored(key)


def one_target(master: Redis, replica: Redis | None = None) -> dict[KeyFamily, ReadTarget]:
    """Every family on one target; `replica`, when given, serves every family."""
    one = ReadTarget(target_label(KEY_FAMILIES), master, replica, frozenset(KEY_FAMILIES))
    return dict.fromkeys(KEY_FAMILIES, one)


def targets_from_settings(
    settings: Settings, client_name: str | None = None
) -> dict[KeyFamily, ReadTarget]:
    """Every family's target from REDIS_URL, REDIS_SESSIONS_URL, REDIS_AI_URL,
    REDIS_VOICE_URL and REDIS_REPLICA_URL (the replica of the targets at
    REDIS_URL, serving all their families); a Sentinel or cluster target's
    replicas serve REPLICA_READ_FAMILIES. A cluster target ignores
    REDIS_REPLICA_URL: its clients find its replicas in its slot map."""
    budget_s = settings.read_timeout_ms / 1000
    options = client_options(budget_s, client_name)
    clients = RedisTargets.from_settings(settings, CLUSTER_OPTIONS, **options)
    urls = target_urls(settings)
    default_url = settings.redis_url.get_secret_value()
    legacy: Redis | None = None
    if settings.redis_replica_url is not None:
        url = settings.redis_replica_url.get_secret_value()
        legacy = redis_client(url, budget_s, redis_options(settings, url), client_name)
    targets: dict[KeyFamily, ReadTarget] = {}
    for families, master in clients.distinct():
        target = clients.targets[families[0]]
        name = target_label(families)
        if isinstance(master, RedisCluster):
            replicas = cluster_replica(target, settings, budget_s, client_name)
            layout = clients.layouts[families[0]]
            slot_map = SlotMap(master, layout, replicas, key=clients.key)
            read = ReadTarget(name, master, replicas, REPLICA_READ_FAMILIES, slot_map)
        elif legacy is not None and urls[families[0]] == default_url:
            read = ReadTarget(name, master, legacy, frozenset(families))
        elif target.is_sentinel:
            replica = sentinel_replica(master, target)
            read = ReadTarget(name, master, replica, REPLICA_READ_FAMILIES)
        else:
            read = ReadTarget(name, master)
        targets |= dict.fromkeys(families, read)
    return targets


class Shard:
    """The breakers of nodes that fail together: a master's and its replicas'."""

    __slots__ = ("address", "breaker", "name", "replica_breaker")

    def __init__(
        self, name: str, address: str | None, settings: Settings, clock: Callable[[], float]
    ) -> None:
        self.name = name
        """The master breaker's name: the target's, or `<target>@<host:port>` on a cluster
        (`redis_targets.master_label`)."""
        self.address = address
        """`host:port` of a cluster master; None for one Redis or a Sentinel set."""
        self.breaker = CircuitBreaker(settings.breaker_fail_max, settings.breaker_reset_s, clock)
        self.replica_breaker = CircuitBreaker(
            settings.breaker_fail_max, settings.breaker_reset_s, clock
        )

    def breaker_of(self, node: Node) -> CircuitBreaker:
        return self.breaker if node == "master" else self.replica_breaker


class Route:
    """A target with its breakers and its slots (one per distinct target)."""

    __slots__ = ("_clock", "_settings", "gate", "main", "shards", "target")

    def __init__(
        self, target: ReadTarget, settings: Settings, clock: Callable[[], float], slots: int
    ) -> None:
        self.target = target
        self._settings = settings
        self._clock = clock
        self.main = Shard(target.name, None, settings, clock)
        """The target's breakers: its master's and its replica's; on a cluster, the
        breaker of its slot map (`SlotMap.learn`)."""
        self.shards: dict[str, Shard] = {}
        """A cluster target's shards by their master's `host:port`, created on first use
        (kept when the master leaves the slot map: their opens still count)."""
        self.gate = asyncio.Semaphore(slots)

    @property
    def breaker(self) -> CircuitBreaker:
        """The target's breaker (a cluster's: its slot map's)."""
        return self.main.breaker

    @property
    def replica_breaker(self) -> CircuitBreaker:
        return self.main.replica_breaker

    def replica_for(self, family: KeyFamily) -> Client | None:
        """The replica client that serves `family`'s reads, if any."""
        target = self.target
        return target.replica if family in target.replica_families else None

    def shard(self, address: str) -> Shard:
        """The shard of the cluster master at `address` (`host:port`)."""
        shard = self.shards.get(address)
        if shard is None:
            name = master_label(self.target.name, address)
            shard = self.shards[address] = Shard(name, address, self._settings, self._clock)
        return shard

    def shard_for(self, stored: str) -> Shard | None:
        """The shard that serves the stored key `stored`: the target's own, or on a
        cluster the shard of the master serving its slot now in the client's slot
        map (None when that map is not known yet or has no master for the slot)."""
        slot_map = self.target.slot_map
        if slot_map is None:
            return self.main
        address = slot_map.master_of(stored)
        return None if address is None else self.shard(address)

    def live_shards(self) -> list[Shard]:
        """The shards the target has now: its own, or a cluster's masters in the
        client's slot map (by address)."""
        slot_map = self.target.slot_map
        return [self.main] if slot_map is None else [self.shard(a) for a in slot_map.masters()]

    def named_breakers(self) -> Iterator[tuple[str, CircuitBreaker, Node]]:
        """Each breaker now, with its name and node: the target's (a cluster's slot
        map's), its replica's as `<target>/replica`; on a cluster each master's in
        the slot map as `<target>@<host:port>` and, when the target reads replicas,
        theirs as `<target>@<host:port>/replica`."""
        has_replica = self.target.replica is not None
        yield self.main.name, self.main.breaker, "master"
        if self.target.slot_map is None:
            if has_replica:
                yield f"{self.main.name}/replica", self.main.replica_breaker, "replica"
            return
        for shard in self.live_shards():
            yield shard.name, shard.breaker, "master"
            if has_replica:
                yield f"{shard.name}/replica", shard.replica_breaker, "replica"

    def master_breakers(self) -> Iterator[CircuitBreaker]:
        """The target's breaker and, on a cluster, every master's seen so far."""
        yield self.main.breaker
        yield from (shard.breaker for shard in self.shards.values())

    async def take_slot(self, counts: Counters) -> None:
        """Wait for one of the target's slots (first come, first served); the wait
        is counted in `counts`, never against Redis. Give it back with `release_slot`."""
        gate = self.gate
        if gate.locked():
            loop = asyncio.get_running_loop()
            started = loop.time()
            counts.queued += 1
            await gate.acquire()
            counts.queue_wait_s += loop.time() - started
        else:
            await gate.acquire()

    def release_slot(self) -> None:
        self.gate.release()


class Routes:
    """The route of every family; families given the same target share one."""

    __slots__ = ("_by_family", "distinct")

    def __init__(
        self,
        targets: Mapping[KeyFamily, ReadTarget],
        settings: Settings,
        clock: Callable[[], float],
        slots: int,
    ) -> None:
        missing = [f for f in KEY_FAMILIES if f not in targets]
        if missing:
            raise ValueError(f"no Redis target for {', '.join(missing)}")
        if slots < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        routes: dict[int, Route] = {}
        self._by_family: dict[KeyFamily, Route] = {}
        for family in KEY_FAMILIES:
            target = targets[family]
            if id(target) not in routes:
                routes[id(target)] = Route(target, settings, clock, slots)
            self._by_family[family] = routes[id(target)]
        self.distinct = list(routes.values())
        """Each distinct target's route, in family order."""

    def __getitem__(self, family: KeyFamily) -> Route:
        return self._by_family[family]

    @property
    def breaker_state(self) -> BreakerState:
        """The worst state of the targets' breakers, a cluster's masters' included
        (replica breakers not: a master answers for them)."""
        return worst(
            breaker.state
            for route in self.distinct
            for _, breaker, node in route.named_breakers()
            if node == "master"
        )

    @property
    def breaker_opens(self) -> int:
        """Times the targets' breakers opened, a cluster's masters' included (replica
        breakers not)."""
        return sum(b.opens for route in self.distinct for b in route.master_breakers())

    def breakers(self) -> dict[str, BreakerState]:
        """Each breaker's state by name (`Route.named_breakers`)."""
        return {
            name: breaker.state
            for route in self.distinct
            for name, breaker, _ in route.named_breakers()
        }

    def clients(self) -> list[Client]:
        """Every distinct client of the targets, each once."""
        clients: dict[int, Client] = {}
        for route in self.distinct:
            for client in (route.target.replica, route.target.master):
                if client is not None:
                    clients.setdefault(id(client), client)
        return list(clients.values())

    async def aclose(self) -> None:
        """Stop the cluster targets' background slot-map refreshes."""
        for route in self.distinct:
            if route.target.slot_map is not None:
                await route.target.slot_map.aclose()
