"""The masters of a Redis Cluster target, each with its slot ranges and replicas, and
commands sent to one master alone.

SPEC §8 and issue 14 ("everything reads per master"): on a cluster target,
INFO, memory, evictions, DBSIZE and rpcache's data-loss marker are figures
of one master each. redis-py's cluster `info()` and `dbsize()` ask one node
only unless given `target_nodes` (measured: `dbsize()` = 1 with 5 keys in
the cluster), so every caller here names the node.

Where the masters come from: the client's own slot map (redis-py's
`nodes_manager.slots_cache`, slot → [master, replica…], built from `CLUSTER
SLOTS`; Redis Cluster specification, "CLUSTER SLOTS"), refreshed first
(`cluster_masters(refresh=True)`). `CLUSTER SLOTS` lists a master that stopped
answering until a replica is promoted in its place, so such a master is
still listed (and reported down by whoever asks it); it leaves out replicas
flagged as failed. A node serving no slot is no master here.

`slot_ranges` and `masters_of_map` are pure; `cluster_masters` does one
`CLUSTER SLOTS` (to the first seed that answers) when asked to refresh;
`wait_replicated` one round trip to each master.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import redis.exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from schemas.keys import DESIGN_SLOT_RANGES, KEY_FAMILIES, KeyFamily
from schemas.slots import SlotRange


def slot_ranges(slots: Iterable[int]) -> tuple[SlotRange, ...]:
    """Slots (any order, duplicates allowed) as sorted inclusive ranges of consecutive
    slots: {0, 1, 2, 7} → (0-2, 7-7); pure."""
    ranges: list[SlotRange] = []
    for slot in sorted(set(slots)):
        if ranges and ranges[-1].hi == slot - 1:
            ranges[-1] = SlotRange(ranges[-1].lo, slot)
        else:
            ranges.append(SlotRange(slot, slot))
    return tuple(ranges)


def overlap(ranges: Iterable[SlotRange], within: SlotRange) -> tuple[SlotRange, ...]:
    """The parts of `ranges` that lie in `within`, in order; pure."""
    parts = (SlotRange(max(r.lo, within.lo), min(r.hi, within.hi)) for r in ranges)
    return tuple(p for p in parts if p.lo <= p.hi)


def count(ranges: Iterable[SlotRange]) -> int:
    """Slots in `ranges` (assumed disjoint)."""
    return sum(r.size for r in ranges)


def format_ranges(ranges: Iterable[SlotRange]) -> str:
    """`0-5460,5461-5470` (a single slot as `n`); `none` for no range."""
    text = ",".join(str(r.lo) if r.lo == r.hi else str(r) for r in ranges)
    return text or "none"


def home_family(ranges: Sequence[SlotRange]) -> KeyFamily | None:
    """The family whose design range (SPEC §8, `DESIGN_SLOT_RANGES`) holds most of
    `ranges`: the family a master of the design layout is there for. None when
    `ranges` is empty; the first family in family order wins a tie; pure."""
    best: tuple[int, KeyFamily] | None = None
    for family in KEY_FAMILIES:
        slots = count(overlap(ranges, DESIGN_SLOT_RANGES[family]))
        if slots and (best is None or slots > best[0]):
            best = (slots, family)
    return best[1] if best else None


@dataclass(frozen=True, slots=True)
class MasterSlots:
    """One master of a slot map: its `host:port`, the slots it serves, its replicas."""

    name: str
    slots: tuple[SlotRange, ...]
    """Sorted, disjoint; never empty."""
    replicas: tuple[str, ...] = ()
    """`host:port` of the replicas the slot map lists (failed ones are left out)."""

    def holds(self, slot: int) -> bool:
        return any(r.holds(slot) for r in self.slots)


def masters_of_map(slot_map: Mapping[int, Sequence[str]]) -> list[MasterSlots]:
    """The masters of a slot map given as slot → node names (the master first, then
    its replicas, as `CLUSTER SLOTS` lists them), ordered by their first slot; pure."""
    slots: dict[str, list[int]] = {}
    replicas: dict[str, dict[str, None]] = {}
    for slot, names in slot_map.items():
        if not names:
            continue
        slots.setdefault(names[0], []).append(slot)
        replicas.setdefault(names[0], {}).update(dict.fromkeys(names[1:]))
    masters = [MasterSlots(n, slot_ranges(s), tuple(replicas[n])) for n, s in slots.items()]
    return sorted(masters, key=lambda m: m.slots[0].lo)


@dataclass(frozen=True, slots=True)
class ClusterMaster:
    """A master of a live cluster client: its slots and the redis-py node to ask."""

    slots: MasterSlots
    node: ClusterNode
    replica_nodes: tuple[ClusterNode, ...] = ()

    @property
    def name(self) -> str:
        """`host:port`."""
        return self.slots.name


async def cluster_masters(
    cluster: RedisCluster, refresh: bool = True, refresh_timeout_s: float | None = None
) -> list[ClusterMaster]:
    """Every master `cluster`'s slot map lists now, ordered by first slot.

    With `refresh`, the map is read again first (`CLUSTER SLOTS`, from the first
    seed that answers); when no node answers, the map the client already has is
    used (also when the refresh takes longer than `refresh_timeout_s`: a hung
    node must not cost the caller its map), and when it has none the error is
    raised: a redis-py
    `RedisClusterException` (`RedisClusterUnreachableError` when no seed can be
    reached), `RedisError` or `OSError`.
    """
    await cluster.initialize()  # the first time: reads the map; afterwards a no-op
    manager = cluster.nodes_manager
    if refresh:
        with contextlib.suppress(
            redis_errors.RedisError, redis_errors.RedisClusterException, OSError, TimeoutError
        ):
            async with asyncio.timeout(refresh_timeout_s):
                await manager.initialize()
    slot_map = {slot: [n.name for n in nodes] for slot, nodes in manager.slots_cache.items()}
    if not slot_map:
        raise redis_errors.RedisClusterException("no slot map: no node of the cluster answered")
    by_name = {n.name: n for nodes in manager.slots_cache.values() for n in nodes}
    return [
        ClusterMaster(m, by_name[m.name], tuple(by_name[r] for r in m.replicas))
        for m in masters_of_map(slot_map)
    ]


async def wait_replicated(
    cluster: RedisCluster, timeout_ms: int = 5000
) -> dict[str, tuple[int, int]]:
    """Until every replica of every master has what that master wrote so far, or
    `timeout_ms` (per master) passed; master name → (replicas that acknowledged,
    replicas connected).

    WAIT (Redis docs, "WAIT") counts the replicas that acknowledged the writes
    of the connection it is sent on, and everything the master wrote before
    them. A PUBLISH does not do on a cluster: a node sends it to the others
    over the cluster bus, not down its replication stream. So a key of the
    master's own slots is written and deleted on one connection to that
    master (a client of its own, with the cluster's connection settings),
    then WAIT on that connection. The caller compares the counts.
    Raises redis-py's `RedisError` / `RedisClusterException` or `OSError`.
    """
    acked: dict[str, tuple[int, int]] = {}
    marker = f"rpcache:sync:{uuid.uuid4().hex[:8]}"
    for master in await cluster_masters(cluster):
        key = _key_served_by(cluster, master.slots, marker)
        node = master.node
        pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
        direct = Redis.from_pool(pool)
        try:
            info = await direct.info("replication")
            want = int(info.get("connected_slaves", 0))
            async with direct.pipeline(transaction=False) as pipe:
                pipe.set(key, "sync", px=timeout_ms)
                pipe.delete(key)
                pipe.execute_command("WAIT", want, timeout_ms)
                *_, count = await pipe.execute()
        finally:
            await direct.aclose()
        acked[master.name] = (int(count), want)
    return acked


def _key_served_by(cluster: RedisCluster, master: MasterSlots, prefix: str) -> str:
    """`prefix:i` for the first i whose slot `master` serves (each master serves a
    share of the 16 384 slots, so a few tries do)."""
    for i in range(100_000):
        key = f"{prefix}:{i}"
        if master.holds(cluster.keyslot(key)):
            return key
    raise redis_errors.RedisClusterException(f"no key of {master.name}'s slots found")
