"""The Redis sink: one round trip per target (per master of a cluster) per batch of
absolute writes.

No MULTI: every operation is idempotent (absolute values, absolute expiry),
so a pipeline cut in half by a crash is simply written again on redelivery.
The commands are packed into RESP by hand (`sinks.resp`, and why); the first
error reply is raised once all replies are in, as `Pipeline.execute` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from schemas.keys import ClusterLayout, KeyFamily
from streams.projections import Delete, RedisOp
from streams.redis_targets import Client, RedisTargets, key_family
from streams.sinks import redis_cluster
from streams.sinks.resp import pack, read_replies

log = logging.getLogger(__name__)


async def write(redis: Redis, ops: Sequence[RedisOp]) -> None:
    """Execute `ops` in order in one round trip; raises the first error reply."""
    if not ops:
        return
    parts, replies = pack(ops)
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(parts)
        errors = await read_replies(conn, replies)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    if errors:
        raise errors[0][1]


async def write_by_target(targets: RedisTargets, ops: list[RedisOp]) -> None:
    """Execute `ops` on each key's family target (SPEC §8): one round trip per target
    (per master of a cluster target), the targets in parallel, each target's ops
    in their order.

    A target that fails raises after the others finished, and `ops` is cut
    down, in place, to the writes that did not land (only then: on success it
    is left as given), so the caller's retry of the same list resends only
    those (resending a landed one would be harmless too: values and expiries
    are absolute).
    """
    groups: dict[int, tuple[Client, list[RedisOp]]] = {}
    for op in ops:
        master = targets.master_for(op.key)
        groups.setdefault(id(master), (master, []))[1].append(op)
    layout = targets.layouts  # only a cluster target's may differ from "hash"
    if len(groups) == 1:
        ((client, group),) = groups.values()
        try:
            await _send(client, group, layout)
        except BaseException:
            ops[:] = group
            raise
        return
    results = await asyncio.gather(
        *(_send(client, group, layout) for client, group in groups.values()),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if not failed:
        return
    ops[:] = [
        op
        for (_, group), result in zip(groups.values(), results, strict=True)
        if isinstance(result, BaseException)
        for op in group
    ]
    raise failed[0]


async def _send(
    client: Client, group: list[RedisOp], layouts: dict[KeyFamily, ClusterLayout]
) -> None:
    """Write one target's ops, in the layout of their family."""
    await write_target(client, group, layouts[key_family(group[0].key)])


async def write_target(client: Client, ops: list[RedisOp], layout: ClusterLayout = "hash") -> None:
    """Write `ops` (SPEC §4 keys, all of one target) to that target's `client`.

    A cluster (`RedisCluster`): each op to the master owning its stored key's
    slot (`layout`: REDIS_CLUSTER_LAYOUT), one round trip per master
    (`sinks.redis_cluster.write`); when it raises, `ops` has been cut down, in
    place, to what did not land. One Redis: `write`, one round trip, and a
    failure lands all of `ops` or none (resend it whole). Raises what those
    raise: a redis-py `RedisError` (the first error reply, a connection
    failure) or an `OSError`.
    """
    if isinstance(client, RedisCluster):
        await redis_cluster.write(client, ops, layout)
    else:
        await write(client, ops)


def is_wrong_type(exc: BaseException) -> bool:
    """Redis's WRONGTYPE answer: the key holds another type than the command's."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


async def write_rewriting(targets: RedisTargets, ops: list[RedisOp]) -> None:
    """Write `ops` (`write_by_target`, which cuts `ops` down to what did
    not land when it raises); a key that holds another type (someone else's SET on
    one of our hashes) is deleted and written again.

    For writers whose keys are theirs alone: `rpcache replay`, which the operator
    runs to put the keys back (the worker's batches only log a WRONGTYPE answer:
    README, "Failures: wait or dead letter"), and the stats writer, the one writer
    of stats:realtime:{day}. Key by key only after a WRONGTYPE, so a write without
    one costs a round trip per target as before. Raises what `write_by_target`
    raises for anything else.
    """
    try:
        await write_by_target(targets, ops)
        return
    except ResponseError as exc:
        if not is_wrong_type(exc):
            raise
    by_key: dict[str, list[RedisOp]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    for key, key_ops in by_key.items():
        try:
            await write_by_target(targets, list(key_ops))
        except ResponseError as exc:
            if not is_wrong_type(exc):
                raise
            log.warning("%s held another type; deleted and written again", key)
            await write_by_target(targets, [Delete(key), *key_ops])
    ops.clear()
