"""Admin steps on the local Redis Cluster for the cluster tests: a node's client, the
masters and who serves a slot now, and live resharding of slots (Redis Cluster
specification, "Live resharding": IMPORTING on the target, MIGRATING on the
source, MIGRATE of the slot's keys, then SETSLOT NODE on every master).

Synchronous redis-py clients: these run between the async steps of a test, or in
a thread (`asyncio.to_thread`) while a writer runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from streams.tools.stack.cluster import HOST, MASTER_PORTS


def admin(port: int) -> redis.Redis:
    """A client of one node alone (no redirects), replies as text."""
    return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=10)


def masters() -> list[int]:
    """The ports of the masters now: a failover (the cluster chaos tests kill masters)
    may have made a replica of MASTER_PORTS the master of its range."""
    slots = admin(MASTER_PORTS[0]).execute_command("CLUSTER SLOTS")
    return sorted({int(master[1]) for _, _, master, *_ in slots})


def owner(slot: int) -> int:
    """The port of the master serving `slot` now."""
    for lo, hi, master, *_ in admin(MASTER_PORTS[0]).execute_command("CLUSTER SLOTS"):
        if lo <= slot <= hi:
            return int(master[1])
    raise AssertionError(f"slot {slot} is not served")


def start_migration(slot: int, source: int, target: int) -> None:
    """The first step of a live reshard of one slot: from now on the source answers
    ASK for its keys that moved."""
    src, dst = admin(source), admin(target)
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src.execute_command("CLUSTER MYID"))
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst.execute_command("CLUSTER MYID"))


def finish_migration(slot: int, source: int, target: int) -> None:
    """Move the slot's remaining keys, then give the slot to `target` on every master."""
    src = admin(source)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", HOST, target, "", 0, 5000, "KEYS", *keys)
    dst_id = admin(target).execute_command("CLUSTER MYID")
    for port in masters():
        admin(port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)


def move_slots(slots: Iterable[int], source: int, target: int) -> None:
    """Live resharding of `slots`, keys included, one slot after the other."""
    for slot in slots:
        start_migration(slot, source, target)
        finish_migration(slot, source, target)
