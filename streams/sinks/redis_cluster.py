"""The Redis sink for a Redis Cluster target: a batch split by the master that owns
each key's slot, one round trip per master, the masters in parallel.

Every op of rpcache writes one key (HSET + PEXPIREAT, SET, ZADD +
ZREMRANGEBYSCORE + PEXPIRE, DEL), so no command can span two slots (no
CROSSSLOT). The commands are the hand-packed RESP of the single-node sink
(`sinks.resp`), sent on the connections of redis-py's `RedisCluster` nodes,
so the cluster client keeps its slot map, TLS and credentials.

Redirects and failures (Redis Cluster spec, "Redirection and resharding"):
an op answered MOVED, TRYAGAIN or CLUSTERDOWN, or sent to a master that
failed mid-write, is sent again after the slot map is refreshed; an op
answered ASK goes to the importing node with ASKING before each command.
Only the ops that did not land are resent (values and expiries are absolute,
so a resend would be harmless anyway). After `_ROUNDS` rounds, what has still
not landed stays in the caller's list and the last error is raised: the
pipeline waits it out (streams/errors.py) and resends that list.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Final

import redis.exceptions as redis_errors
from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from schemas.keys import ClusterLayout
from streams.projections import RedisOp
from streams.redis_targets import stored_key
from streams.sinks.resp import REPLIES, pack, read_replies

_ROUNDS: Final = 4
"""Sends of one batch before the error goes to the caller's wait."""

_RESEND: Final = (
    redis_errors.AskError,  # and MovedError, its subclass
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.SlotNotCoveredError,
    OSError,
)
"""Failures a refreshed slot map (or a moment) can fix; any other error ends the rounds."""

_Route = tuple[str, bool]
"""A node's name (host:port) and whether its ops go with ASKING."""


async def write(cluster: RedisCluster, ops: list[RedisOp], layout: ClusterLayout = "hash") -> None:
    """Execute `ops` (SPEC §4 keys) on the masters owning their stored keys' slots
    (`layout`: REDIS_CLUSTER_LAYOUT, `schemas.keys.layout_key`); each master's in order.

    When this raises, `ops` has been cut down, in place, to what did not land
    (on success it is left as given); the error is the last of the last round:
    a redis-py `RedisError`, an `OSError`, or `SlotNotCoveredError` when no
    node serves a slot.
    """
    if not ops:
        return
    await cluster.initialize()  # once; a no-op afterwards
    stored = (
        ops if layout == "hash" else [replace(op, key=stored_key(op.key, layout)) for op in ops]
    )
    pending: list[tuple[int, str | None]] = [(i, None) for i in range(len(ops))]
    last: BaseException | None = None
    for round_ in range(_ROUNDS):
        if round_:
            await asyncio.sleep(0.05 * round_)  # TRYAGAIN / a failover in progress
            await _refresh(cluster)
        pending, errors = await _send_round(cluster, stored, pending)
        if not pending:
            return
        last = errors[-1]
        if not all(isinstance(e, _RESEND) for e in errors):
            break  # an answer a refreshed map cannot change (OOM, WRONGTYPE...)
    ops[:] = [ops[i] for i, _ in pending]
    assert last is not None
    raise last


async def _send_round(
    cluster: RedisCluster, stored: list[RedisOp], pending: list[tuple[int, str | None]]
) -> tuple[list[tuple[int, str | None]], list[BaseException]]:
    """One send of every pending op (an index into `stored`, and the node an ASK
    named) to its node; what did not land, and why."""
    nodes = cluster.nodes_manager
    groups: dict[_Route, tuple[ClusterNode | None, list[int]]] = {}
    errors: list[BaseException] = []
    retry: list[tuple[int, str | None]] = []
    for i, ask in pending:
        try:
            node = nodes.get_node(node_name=ask) if ask else _master(cluster, stored[i].key)
        except redis_errors.SlotNotCoveredError as exc:
            retry.append((i, None))
            errors.append(exc)
            continue
        name = ask if ask else node.name if node else ""
        groups.setdefault((name, ask is not None), (node, []))[1].append(i)
    routes = list(groups.items())
    results = await asyncio.gather(
        *(
            _send_node(node, [stored[i] for i in group], asking)
            for (_, asking), (node, group) in routes
        ),
        return_exceptions=True,
    )
    for (_, (_, group)), result in zip(routes, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # CancelledError, KeyboardInterrupt: not ours to keep
            retry += [(i, None) for i in group]
            errors.append(result)
            continue
        for position, refusal in result:
            errors.append(refusal)
            ask_node = (
                f"{refusal.host}:{refusal.port}" if type(refusal) is redis_errors.AskError else None
            )
            retry.append((group[position], ask_node))
    return retry, errors


def _master(cluster: RedisCluster, key: str) -> ClusterNode:
    """The master serving `key`'s slot in the client's current slot map."""
    return cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))


async def _send_node(
    node: ClusterNode | None, ops: list[RedisOp], asking: bool
) -> list[tuple[int, redis_errors.ResponseError]]:
    """Send `ops` to `node` in one round trip; the positions of the ops an error
    reply refused, with the first refusal of each.

    Raises ConnectionError/TimeoutError when the node fails mid-write (then
    any of `ops` may or may not have landed: all are resent).
    """
    if node is None:  # an ASK to a node the map does not know yet
        raise redis_errors.ConnectionError("ASK redirect to a node not in the slot map")
    parts, replies = pack(ops, asking=asking)
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(parts)
        errors = await read_replies(conn, replies)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        node.release(conn)
    if not errors:
        return []
    owner = [i for i, op in enumerate(ops) for _ in range(REPLIES[type(op)] * (1 + asking))]
    refused: dict[int, redis_errors.ResponseError] = {}
    for reply, exc in errors:
        refused.setdefault(owner[reply], exc)
    return list(refused.items())


async def _refresh(cluster: RedisCluster) -> None:
    """Ask the cluster for its current slot map (after MOVED, a failover, a reshard)."""
    # No node answering yet is not an error here: the next round's sends say so.
    with contextlib.suppress(redis_errors.RedisError, redis_errors.RedisClusterException, OSError):
        await cluster.nodes_manager.initialize()
