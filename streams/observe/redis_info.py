"""Each Redis target's INFO, read one way for `/metrics`, `/dashboard.json` and the alerts.

SPEC §8 gives every key family a Redis target; families with the same URL
share one (`RedisTargets.distinct()`). `read_targets` reads INFO (its default
sections) from every distinct target concurrently, on that target's master
client: for a Sentinel target, the master the Sentinels name now. Each
target gets `timeout_s` of its own; one that fails or runs out of time is
reported down (`TargetFigures.figures` None, with why) and the others are
reported as usual, so a dead voice master hides nothing about the session
target. Nothing here raises for a Redis failure.

A Redis Cluster target (SPEC §8, issue 14 "everything reads per master") is
one row per master, labelled `<families>@host:port` (`master_label`): each
master's own INFO (memory, clients, evictions, policy, and its keys from INFO
keyspace `db0`, what DBSIZE on that master answers). redis-py's cluster
`info()` / `dbsize()` would ask one node only, so each master is asked by name
(`target_nodes`), concurrently. The masters are those of the client's slot
map, read again at each call (`streams.cluster_masters`); a master that does
not answer is a down row of its own, so the fullest master, not an average
or one node picked at random, is what the alerts and the dashboard see.

`worst` is the one place the alerts' Redis figures are computed (the fullest
target's used/maxmemory, the busiest target's clients); the dashboard shows
the same function's result on its Redis card, so the page and the alerts
cannot disagree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from redis.asyncio import Redis, RedisCluster

from streams.cluster_masters import ClusterMaster, cluster_masters
from streams.observe.metrics import RedisFigures, RedisWorst, TargetFigures
from streams.redis_targets import Client, RedisTargets, master_label, target_label

log = logging.getLogger(__name__)

INFO_TIMEOUT_S: Final = 2.0
"""How long one target's INFO may take before the target counts as down."""


def parse_info(info: Mapping[str, Any], db: int, node: str) -> RedisFigures:
    """The figures of one INFO reply (redis-py's parsed dict: default sections); pure.

    `db`: the target's database, whose key count INFO keyspace gives as `db<n>`
    (absent when empty: 0 keys). `node`: the `host:port` that answered. A field
    missing from the reply counts 0 (or "" for text); Redis's `slave` role is
    reported as `replica`.
    """
    space = info.get(f"db{db}")
    role = str(info.get("role", ""))
    return RedisFigures(
        used_memory=int(info.get("used_memory", 0)),
        maxmemory=int(info.get("maxmemory", 0)),
        connected_clients=int(info.get("connected_clients", 0)),
        evicted_keys=int(info.get("evicted_keys", 0)),
        keys=int(space.get("keys", 0)) if isinstance(space, Mapping) else 0,
        policy=str(info.get("maxmemory_policy", "")),
        node=node,
        role="replica" if role == "slave" else role,
    )


def error_text(exc: BaseException) -> str:
    """Why a target is down: the exception's repr (`TimeoutError()`), or `Type: message`
    when the repr leaves the message out (some redis-py exceptions' do)."""
    text = repr(exc)
    return text if str(exc) in text else f"{type(exc).__name__}: {exc}"


def node_address(connection: object) -> str:
    """`host:port` of a redis-py connection (`unix:<path>` for a socket, `?` when unknown)."""
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    path = getattr(connection, "path", None)
    return f"unix:{path}" if path else "?"


async def read_target(target: str, client: Redis, timeout_s: float) -> TargetFigures:
    """INFO of one target, on one connection of `client`'s pool (so the node that
    answered is known), within `timeout_s`; a failure is returned as the target down
    (and logged), never raised."""
    one = client.client()  # that connection only; closing it gives it back to the pool
    try:
        async with asyncio.timeout(timeout_s):
            info = await one.info()
        connection = one.connection
        db = int(getattr(connection, "db", 0) or 0)
        return TargetFigures(target, parse_info(info, db, node_address(connection)))
    except Exception as exc:
        log.warning("Redis INFO of target %s failed: %r", target, exc)
        return TargetFigures(target, None, error_text(exc))
    finally:
        await one.aclose()


async def read_master(target: str, cluster: RedisCluster, master: ClusterMaster) -> TargetFigures:
    """INFO of one master of a cluster, asked of that node alone (no redirect, no
    retry: `target_nodes`); a failure is returned as that master down, never raised.
    The caller bounds the time."""
    label = master_label(target, master.name)
    try:
        info = await cluster.info(target_nodes=master.node)
        return TargetFigures(label, parse_info(info, 0, master.name))
    except Exception as exc:
        log.warning("Redis INFO of cluster master %s failed: %r", label, exc)
        return TargetFigures(label, None, error_text(exc))


async def read_cluster(target: str, cluster: RedisCluster, timeout_s: float) -> list[TargetFigures]:
    """One row per master of a cluster target, in slot order, all within `timeout_s`
    (the slot map's refresh, then every master concurrently): a master that has not
    answered by then is down. When not even a slot map can be had, one row for the
    whole target, down. Never raises for a Redis failure."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):  # half for the map: a hung node costs
            masters = await cluster_masters(cluster, refresh_timeout_s=timeout_s / 2)
    except Exception as exc:
        log.warning("Redis cluster target %s: no slot map: %r", target, exc)
        return [TargetFigures(target, None, error_text(exc))]

    async def one(master: ClusterMaster) -> TargetFigures:
        try:
            async with asyncio.timeout_at(deadline):
                return await read_master(target, cluster, master)
        except TimeoutError as exc:
            log.warning("Redis INFO of cluster master %s timed out", master.name)
            return TargetFigures(master_label(target, master.name), None, error_text(exc))

    return list(await asyncio.gather(*(one(m) for m in masters)))


async def _read_one(target: str, client: Client, timeout_s: float) -> list[TargetFigures]:
    if isinstance(client, RedisCluster):
        return await read_cluster(target, client, timeout_s)
    return [await read_target(target, client, timeout_s)]


async def read_targets(
    targets: RedisTargets, timeout_s: float = INFO_TIMEOUT_S
) -> list[TargetFigures]:
    """Every distinct target's figures, concurrently, in family order (SPEC §8); a
    cluster target as one row per master, in slot order (`read_cluster`).

    Labels are `target_label` of the families a target serves, and
    `<that>@host:port` for a cluster's master. Takes at most about `timeout_s`;
    never raises for a Redis failure.
    """
    rows = await asyncio.gather(
        *(
            _read_one(target_label(families), client, timeout_s)
            for families, client in targets.distinct()
        )
    )
    return [row for target_rows in rows for row in target_rows]


def worst(targets: Iterable[TargetFigures]) -> RedisWorst:
    """The alerts' Redis figures over the targets that answered; pure.

    The highest used/maxmemory (targets without a maxmemory have no ratio) and
    the most connected clients, each with its target: one full voice master is
    as critical as one full shared Redis, and one full master of a cluster as a
    full cluster (each master has its own maxmemory). A target down is left out (the
    connection-failure rule and `rpcache_redis_up` speak for it); the first
    target wins a tie.
    """
    up = [(t.target, t.figures) for t in targets if t.figures is not None]
    ratios = [(r, name) for name, f in up if (r := f.memory_ratio) is not None]
    fullest = max(ratios, key=lambda x: x[0], default=None)  # max keeps the first of equals
    busiest = max(((f.connected_clients, name) for name, f in up), key=lambda x: x[0], default=None)
    return RedisWorst(
        memory_ratio=fullest[0] if fullest else None,
        memory_target=fullest[1] if fullest else None,
        connected_clients=busiest[0] if busiest else None,
        clients_target=busiest[1] if busiest else None,
    )
