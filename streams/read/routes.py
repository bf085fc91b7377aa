"""Where a read goes: each key family's Redis target, with its breakers and its slots.

A `ReadTarget` is one Redis target as the reader uses it (SPEC §8): the
master that takes every write-back and the reads that must reach it, and
maybe a replica for some families ("Replicas" in `streams.read.reader`).
Families given the same target share one `Route`: its two circuit breakers
(the master's, the replica's) and its `max_in_flight` slots, the bounded
queue of the reader's own process ("What is Redis's fault").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from streams.read.breaker import BreakerState, CircuitBreaker, worst
from streams.read.clients import client_options, redis_client, sentinel_replica
from streams.read.results import Node
from streams.read.stats import Counters
from streams.redis_targets import KEY_FAMILIES, KeyFamily, RedisTargets, target_urls
from streams.security import redis_options
from streams.settings import Settings

MAX_IN_FLIGHT: Final = 32
"""Redis round trips one reader has in flight per target; more reads wait for a slot."""

REPLICA_READ_FAMILIES: Final[frozenset[KeyFamily]] = frozenset({"sessions"})
"""Families a Sentinel target's replica serves (`streams.read.reader`, "Replicas")."""


@dataclass(frozen=True, eq=False, slots=True)
class ReadTarget:
    """One Redis target as the reader uses it: where a family's reads and write-backs go."""

    name: str
    """The families it serves, joined by `+` (`voice`, `sessions+ai+voice`)."""
    master: Redis
    """Reads that must reach the master, and every write-back."""
    replica: Redis | None = None
    replica_families: frozenset[KeyFamily] = frozenset()
    """Families read from `replica` (when it answers)."""


def one_target(master: Redis, replica: Redis | None = None) -> dict[KeyFamily, ReadTarget]:
    """Every family on one target; `replica`, when given, serves every family."""
    one = ReadTarget("+".join(KEY_FAMILIES), master, replica, frozenset(KEY_FAMILIES))
    return dict.fromkeys(KEY_FAMILIES, one)


def targets_from_settings(
    settings: Settings, client_name: str | None = None
) -> dict[KeyFamily, ReadTarget]:
    """Every family's target from REDIS_URL, REDIS_SESSIONS_URL, REDIS_AI_URL,
    REDIS_VOICE_URL and REDIS_REPLICA_URL (the replica of the targets at
    REDIS_URL, serving all their families); a Sentinel target's replica serves
    REPLICA_READ_FAMILIES."""
    budget_s = settings.read_timeout_ms / 1000
    clients = RedisTargets.from_settings(settings, **client_options(budget_s, client_name))
    urls = target_urls(settings)
    default_url = settings.redis_url.get_secret_value()
    legacy: Redis | None = None
    if settings.redis_replica_url is not None:
        url = settings.redis_replica_url.get_secret_value()
        legacy = redis_client(url, budget_s, redis_options(settings, url), client_name)
    targets: dict[KeyFamily, ReadTarget] = {}
    for families, master in clients.distinct():
        target = clients.targets[families[0]]
        name = "+".join(families)
        if legacy is not None and urls[families[0]] == default_url:
            read = ReadTarget(name, master, legacy, frozenset(families))
        elif target.is_sentinel:
            replica = sentinel_replica(master, target)
            read = ReadTarget(name, master, replica, REPLICA_READ_FAMILIES)
        else:
            read = ReadTarget(name, master)
        targets |= dict.fromkeys(families, read)
    return targets


class Route:
    """A target with its breakers and its slots (one per distinct target)."""

    __slots__ = ("breaker", "gate", "replica_breaker", "target")

    def __init__(
        self, target: ReadTarget, settings: Settings, clock: Callable[[], float], slots: int
    ) -> None:
        self.target = target
        self.breaker = CircuitBreaker(settings.breaker_fail_max, settings.breaker_reset_s, clock)
        self.replica_breaker = CircuitBreaker(
            settings.breaker_fail_max, settings.breaker_reset_s, clock
        )
        self.gate = asyncio.Semaphore(slots)

    def replica_for(self, family: KeyFamily) -> Redis | None:
        """The replica that serves `family`'s reads, if any."""
        target = self.target
        return target.replica if family in target.replica_families else None

    def breaker_of(self, node: Node) -> CircuitBreaker:
        return self.breaker if node == "master" else self.replica_breaker

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
        """The worst state of the targets' breakers (one target: its breaker's state)."""
        return worst(r.breaker.state for r in self.distinct)

    @property
    def breaker_opens(self) -> int:
        """Times the targets' breakers opened (replica breakers not included)."""
        return sum(r.breaker.opens for r in self.distinct)

    def breakers(self) -> dict[str, BreakerState]:
        """Each breaker's state: a target's by its name, its replica's as `name/replica`."""
        states: dict[str, BreakerState] = {}
        for route in self.distinct:
            states[route.target.name] = route.breaker.state
            if route.target.replica is not None:
                states[f"{route.target.name}/replica"] = route.replica_breaker.state
        return states

    def clients(self) -> list[Redis]:
        """Every distinct client of the targets, each once."""
        clients: dict[int, Redis] = {}
        for route in self.distinct:
            for client in (route.target.replica, route.target.master):
                if client is not None:
                    clients.setdefault(id(client), client)
        return list(clients.values())
