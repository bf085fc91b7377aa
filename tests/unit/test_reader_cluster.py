"""CacheReader on a cluster target, without servers: a breaker per master, replicas per
shard, the slot map learned and refreshed, write-backs in the target's layout.

A stand-in for redis-py's `RedisCluster` routes each key by its real slot
(`schemas.slots.key_slot`) through a slot map of two shards, A (the even
slots) and B (the odd ones, so that every family has keys on both in either
layout), each a master and a replica; the master client
reads the slot's master, the replica client its replica, as
`clients.cluster_replica` does. The real cluster: tests/integration/test_reader_cluster.py.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis.exceptions as redis_errors
from prometheus_client import CollectorRegistry

from schemas import H
from schemas.keys import (
    ClusterLayout,
    ai_response_key_for_hash,
    layout_key,
    session_key,
)
from schemas.slots import key_slot
from streams.observe.metrics import register_reader
from streams.projections import Delete, HashWrite, RedisOp, StringWrite
from streams.read import recompute
from streams.read.breaker import BreakerState
from streams.read.reader import CacheReader
from streams.read.routes import REPLICA_READ_FAMILIES, ReadTarget
from streams.read.slotmap import SlotMap
from streams.settings import Settings
from streams.sinks import redis as redis_sink
from tests.unit.test_breaker import Clock
from tests.unit.test_reader import FIELDS, FakePool, FakeRedis

EVEN, ODD = range(0, 16384, 2), range(1, 16384, 2)
A, A_REPLICA, B, B_REPLICA, C = (
    "10.0.0.1:6401",
    "10.0.0.4:6404",
    "10.0.0.2:6402",
    "10.0.0.5:6405",
    "10.0.0.3:6403",
)
T = "sessions+ai+voice"


class FakeNode(FakeRedis):
    """One node of the cluster (answers from its own dict)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class FakeNodesManager:
    """The part of redis-py's `NodesManager` the reader reads: the slot map."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.slots_cache: dict[int, list[FakeNode]] = {}
        self.refreshes = 0

    def get_nodes_by_server_type(self, server_type: str) -> list[FakeNode]:
        assert server_type == "primary"
        return list({id(n[0]): n[0] for n in self.slots_cache.values()}.values())

    async def initialize(self) -> None:
        self.refreshes += 1
        await self.cluster.answer_map()


class FakeCluster:
    """A `RedisCluster` stand-in: each key to its slot's master (or replica)."""

    def __init__(self, nodes: dict[str, FakeNode], replicas: bool = False) -> None:
        self.nodes = nodes
        self.replicas = replicas
        self.nodes_manager = FakeNodesManager(self)
        self.map: dict[int, list[FakeNode]] = {}
        """What CLUSTER SLOTS answers now (the client's copy: nodes_manager.slots_cache)."""
        self.map_mode = "ok"
        self.inits = 0

    def serve(self, slots: range, *names: str) -> None:
        """CLUSTER SLOTS from now on: `slots` on `names` (master first; none: not served)."""
        for slot in slots:
            if names:
                self.map[slot] = [self.nodes[n] for n in names]
            else:
                self.map.pop(slot, None)

    async def answer_map(self) -> None:
        if self.map_mode == "down":
            raise redis_errors.RedisClusterException("Redis Cluster cannot be connected")
        if self.map_mode == "hang":
            await asyncio.sleep(30)
        self.nodes_manager.slots_cache = dict(self.map)

    async def initialize(self) -> FakeCluster:
        self.inits += 1
        if not self.nodes_manager.slots_cache:
            await self.answer_map()
        return self

    async def _node(self, key: str) -> FakeNode:
        if not self.nodes_manager.slots_cache:  # a command reads the map first, as redis-py's
            await self.answer_map()
        nodes = self.nodes_manager.slots_cache.get(key_slot(key))
        if not nodes:
            raise redis_errors.SlotNotCoveredError(f"slot of {key} not covered")
        return nodes[1] if self.replicas and len(nodes) > 1 else nodes[0]

    async def hgetall(self, key: str) -> dict[str, str]:
        return await (await self._node(key)).hgetall(key)

    async def get(self, key: str) -> str | None:
        return await (await self._node(key)).get(key)

    async def aclose(self) -> None:
        pass


def key_in(make: Callable[[str], str], slots: range, layout: ClusterLayout) -> str:
    """The first id whose key, as stored in `layout`, has its slot in `slots`."""
    for i in itertools.count():
        ident = str(uuid.UUID(int=i))
        if key_slot(layout_key(make(ident), layout)) in slots:
            return ident
    raise AssertionError("unreachable")


class Cluster:
    """Two shards (A: even slots, B: odd ones), a master and a replica each, one target
    for every family; keys of each kind on each shard, present on its nodes."""

    def __init__(self, layout: ClusterLayout = "hash") -> None:
        names = (A, A_REPLICA, B, B_REPLICA, C)
        self.nodes = {n: FakeNode(n) for n in names}
        self.master = FakeCluster(self.nodes)
        self.replica = FakeCluster(self.nodes, replicas=True)
        for client in (self.master, self.replica):
            client.serve(EVEN, A, A_REPLICA)
            client.serve(ODD, B, B_REPLICA)
        self.layout = layout
        self.sid = {A: key_in(session_key, EVEN, layout), B: key_in(session_key, ODD, layout)}
        self.prompt = {A: key_in(ai_key, EVEN, layout), B: key_in(ai_key, ODD, layout)}
        for shard, replica in ((A, A_REPLICA), (B, B_REPLICA)):
            for node in (shard, replica):
                data = self.nodes[node].data
                data[self.stored(session_key(self.sid[shard]))] = FIELDS
                data[self.stored(self.ai_key(shard))] = ai_text(self.prompt[shard])

    def stored(self, key: str) -> str:
        return layout_key(key, self.layout)

    def ai_key(self, shard: str) -> str:
        return ai_response_key_for_hash(H(self.prompt[shard]))

    def reader(self, clock: Clock | None = None, known: bool = True) -> CacheReader:
        clock = clock or Clock()
        if known:
            for client in (self.master, self.replica):
                client.nodes_manager.slots_cache = dict(client.map)
        slots = SlotMap(
            self.master,  # type: ignore[arg-type]
            self.layout,
            self.replica,  # type: ignore[arg-type]
            clock=clock,
        )
        target = ReadTarget(
            T,
            self.master,  # type: ignore[arg-type]
            self.replica,  # type: ignore[arg-type]
            REPLICA_READ_FAMILIES,
            slots,
        )
        settings = Settings(read_timeout_ms=20, breaker_fail_max=2, breaker_reset_s=5)
        return CacheReader(
            settings,
            targets=dict.fromkeys(("sessions", "ai", "voice"), target),  # type: ignore[arg-type]
            pool=FakePool(),  # type: ignore[arg-type]
            clock=clock,
        )


def ai_key(prompt: str) -> str:
    return ai_response_key_for_hash(H(prompt))


def ai_text(prompt: str) -> str:
    return orjson.dumps({"prompt_hash": H(prompt), "response": "r"}).decode()


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch) -> dict[str, RedisOp]:
    """What the stand-in PostgreSQL recomputes for each SPEC §4 key."""
    state: dict[str, RedisOp] = {}

    async def session_op(conn: object, session_id: str, now: datetime) -> RedisOp:
        return state.get(session_key(session_id), Delete(session_key(session_id)))

    async def ai_response_op(conn: object, prompt_hash: str, now: datetime) -> RedisOp:
        key = ai_response_key_for_hash(prompt_hash)
        return state.get(key, Delete(key))

    monkeypatch.setattr(recompute, "session_op", session_op)
    monkeypatch.setattr(recompute, "ai_response_op", ai_response_op)
    return state


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, list[RedisOp], str]]:
    """Write-backs, as `sinks.redis.write_target` is asked for them."""
    log: list[tuple[object, list[RedisOp], str]] = []

    async def write_target(client: object, ops: list[RedisOp], layout: str = "hash") -> None:
        log.append((client, list(ops), layout))

    monkeypatch.setattr(redis_sink, "write_target", write_target)
    return log


def where(result: Any) -> tuple[str, str | None, str | None, str | None]:
    return (result.source, result.target, result.node, result.shard)


# --- the slot map ------------------------------------------------------------------------
def test_the_slot_map_names_each_keys_master_and_its_replicas() -> None:
    c = Cluster("design")
    slots = SlotMap(c.master, "design")  # type: ignore[arg-type]
    assert not slots.known
    c.master.nodes_manager.slots_cache = dict(c.master.map)
    key = session_key(c.sid[A])
    assert slots.stored(key) == layout_key(key, "design") != key
    assert slots.master_of(slots.stored(key)) == A
    assert slots.master_of(slots.stored(session_key(c.sid[B]))) == B
    assert slots.replicated(slots.stored(key))
    assert slots.masters() == sorted([A, B])
    c.master.nodes_manager.slots_cache = {s: [c.nodes[C]] for s in ODD}
    assert slots.master_of(slots.stored(key)) is None  # its slot: no master in the map
    assert not slots.replicated(slots.stored(key))
    odd = next(k for k in ("{a}", "{b}", "{c}") if key_slot(k) % 2)
    assert slots.master_of(odd) == C and not slots.replicated(odd)  # no replica
    assert SlotMap(c.master, "hash", key=str.upper).stored("session:x") == "SESSION:X"  # type: ignore[arg-type]


async def test_a_background_refresh_runs_once_at_a_time_and_at_most_once_a_second() -> None:
    c = Cluster()
    clock = Clock()
    c.master.nodes_manager.slots_cache = dict(c.master.map)
    slots = SlotMap(c.master, "hash", c.replica, clock=clock)  # type: ignore[arg-type]
    slots.refresh_soon()
    slots.refresh_soon()  # one in progress
    await asyncio.sleep(0)
    clock.now += 0.5
    slots.refresh_soon()  # too soon
    await asyncio.sleep(0)
    # The replica client never read its map: left to its first command.
    assert (c.master.nodes_manager.refreshes, c.replica.nodes_manager.refreshes) == (1, 0)
    clock.now += 0.6
    c.master.map_mode = "down"  # a refresh that fails keeps the map
    slots.refresh_soon()
    await asyncio.sleep(0)
    assert c.master.nodes_manager.refreshes == 2
    assert slots.master_of(session_key(c.sid[A])) == A
    await slots.aclose()


# --- reads ------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["hash", "design"])
async def test_each_read_names_its_shard_sessions_from_its_replica_caches_from_its_master(
    layout: ClusterLayout,
    postgres: dict[str, RedisOp],
    written: list[tuple[object, list[RedisOp], str]],
) -> None:
    c = Cluster(layout)
    reader = c.reader()
    results = [
        await reader.get_session(c.sid[A]),
        await reader.get_session(c.sid[B]),
        await reader.get_ai_response(c.prompt[A]),
        await reader.get_ai_response(c.prompt[B]),
    ]
    assert [where(r) for r in results] == [
        ("redis", T, "replica", A),
        ("redis", T, "replica", B),
        ("redis", T, "master", A),
        ("redis", T, "master", B),
    ]
    assert results[0].value == FIELDS
    calls = {name: node.calls for name, node in c.nodes.items()}
    assert calls == {A: 1, A_REPLICA: 1, B: 1, B_REPLICA: 1, C: 0}
    s = reader.stats
    assert (s.hits, s.replica_hits, s.fallbacks, s.redis_errors) == (4, 2, 0, 0)
    assert s.breakers == {
        T: "closed",
        f"{T}@{A}": "closed",
        f"{T}@{A}/replica": "closed",
        f"{T}@{B}": "closed",
        f"{T}@{B}/replica": "closed",
    }
    assert (c.master.inits, c.master.nodes_manager.refreshes) == (0, 0)  # the map was known

    # Absent: PostgreSQL's entry is written back through the sink, in the layout.
    key = c.ai_key(B)
    op = StringWrite(key, ai_text(c.prompt[B]), 10**13)
    postgres[key] = op
    for node in (B, B_REPLICA):
        c.nodes[node].data.clear()
    through = await reader.get_ai_response(c.prompt[B])
    assert where(through) == ("postgres", T, None, None)
    assert written == [(c.master, [op], layout)]


async def test_a_dead_master_sends_only_its_shards_reads_to_postgres(
    postgres: dict[str, RedisOp], written: list[tuple[object, list[RedisOp], str]]
) -> None:
    c = Cluster()
    for shard in (A, B):
        postgres[c.ai_key(shard)] = StringWrite(c.ai_key(shard), ai_text(c.prompt[shard]), 10**13)
    clock = Clock()
    reader = c.reader(clock)
    c.nodes[A].mode = "down"
    for _ in range(4):
        assert where(await reader.get_ai_response(c.prompt[A]))[:3] == ("postgres", T, None)
        assert where(await reader.get_ai_response(c.prompt[B])) == ("redis", T, "master", B)
        # A's replica still serves A's session reads (partial failure: what answers goes on)
        assert where(await reader.get_session(c.sid[A])) == ("redis", T, "replica", A)
    assert c.nodes[A].calls == 2  # fail_max, then skipped while its breaker is open
    s = reader.stats
    assert s.breakers[f"{T}@{A}"] == "open"
    assert s.breakers[f"{T}@{B}"] == s.breakers[T] == s.breakers[f"{T}@{A}/replica"] == "closed"
    assert (s.breaker_state, s.breaker_opens, s.fallbacks, s.redis_errors) == ("open", 1, 4, 2)
    assert written == []  # nothing written back to a failing master
    await asyncio.sleep(0)
    assert c.master.nodes_manager.refreshes == 1  # asked once (at most once a second)

    # The metrics export names each master's breaker.
    registry = CollectorRegistry()
    register_reader(reader, registry)
    metric = "rpcache_reader_target_breaker_state"
    labels = {"breaker": f"{T}@{A}", "state": "open"}
    assert registry.get_sample_value(metric, labels) == 1
    assert registry.get_sample_value(metric, {**labels, "breaker": f"{T}@{B}"}) == 0

    # A's replica is promoted. The breaker's probe fails on A and asks for the map
    # again, which names the new master, whose own breaker is closed.
    c.master.serve(EVEN, A_REPLICA)
    c.replica.serve(EVEN, A_REPLICA)
    clock.now += 5
    assert (await reader.get_ai_response(c.prompt[A])).source == "postgres"
    await asyncio.sleep(0)
    assert c.master.nodes_manager.refreshes == 2
    got = await reader.get_ai_response(c.prompt[A])
    assert where(got) == ("redis", T, "master", A_REPLICA)
    # No replica left for A: its session reads go to its (new) master, no failure counted.
    assert where(await reader.get_session(c.sid[A])) == ("redis", T, "master", A_REPLICA)
    s = reader.stats
    assert f"{T}@{A}" not in s.breakers  # no longer a master: not shown (its opens still count)
    assert (s.breaker_state, s.breaker_opens) == ("closed", 2)  # A opened twice (the probe)


async def test_the_slot_map_is_learned_under_the_targets_breaker(
    postgres: dict[str, RedisOp],
) -> None:
    c = Cluster()
    postgres[session_key(c.sid[A])] = HashWrite(session_key(c.sid[A]), FIELDS, 10**13)
    clock = Clock()
    c.master.map_mode = "down"  # no seed answers
    reader = c.reader(clock, known=False)
    for _ in range(4):
        assert where(await reader.get_session(c.sid[A]))[:3] == ("postgres", T, None)
    assert c.master.inits == 2  # fail_max, then the target's breaker skips it
    assert reader.breaker_for("sessions").state is BreakerState.OPEN
    assert reader.stats.breakers == {T: "open"}  # no master known yet
    c.master.map_mode = "ok"
    clock.now += 5
    assert where(await reader.get_session(c.sid[A])) == ("redis", T, "replica", A)
    assert reader.breaker_for("sessions").state is BreakerState.CLOSED


async def test_a_slot_no_master_serves_goes_to_postgres_the_others_stay_on_redis(
    postgres: dict[str, RedisOp],
) -> None:
    c = Cluster()
    for shard in (A, B):
        postgres[c.ai_key(shard)] = StringWrite(c.ai_key(shard), ai_text(c.prompt[shard]), 10**13)
    clock = Clock()
    for client in (c.master, c.replica):
        client.serve(EVEN)  # shard A lost its master and replica
    reader = c.reader(clock)
    for _ in range(3):
        assert where(await reader.get_ai_response(c.prompt[A]))[:3] == ("postgres", T, None)
        assert where(await reader.get_ai_response(c.prompt[B])) == ("redis", T, "master", B)
    assert c.master.nodes_manager.refreshes == 2  # read again, twice, then the breaker
    assert reader.stats.breakers == {
        T: "open",
        f"{T}@{B}": "closed",
        f"{T}@{B}/replica": "closed",
    }
    c.master.serve(EVEN, A)  # A is back
    clock.now += 5
    assert where(await reader.get_ai_response(c.prompt[A])) == ("redis", T, "master", A)
    assert reader.stats.breakers[T] == "closed"


async def test_a_hung_master_is_charged_to_its_shard_only(postgres: dict[str, RedisOp]) -> None:
    c = Cluster()
    for shard in (A, B):
        postgres[c.ai_key(shard)] = StringWrite(c.ai_key(shard), ai_text(c.prompt[shard]), 10**13)
    reader = c.reader()
    c.nodes[B].mode = "hang"
    results = await asyncio.gather(
        *(reader.get_ai_response(c.prompt[s]) for _ in range(3) for s in (A, B))
    )
    assert [r.source for r in results] == ["redis", "postgres"] * 3
    assert reader.stats.breakers[f"{T}@{B}"] == "open"
    assert reader.stats.breakers[f"{T}@{A}"] == "closed"
