"""The Redis sink: one round trip per batch of absolute writes.

No MULTI: every operation is idempotent (absolute values, absolute expiry),
so a pipeline cut in half by a crash is simply written again on redelivery.

The commands are packed into RESP here rather than queued on a redis-py
pipeline. A batch projects thousands of commands (HSET and PEXPIREAT for
every session and user it touched), and the pipeline's per-command stack,
per-argument encoder, per-reply timeout and response callbacks cost more CPU
in the worker than anything else it does for an event (README, Performance).
The bytes on the wire are the ones the pipeline sends, and every reply is
still read: the first error is raised once all replies are in, as
`Pipeline.execute` does.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import redis.exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite
from streams.redis_targets import RedisTargets

_LARGE = 16 * 1024
"""Arguments from this size on are sent as their own buffer, not copied into one."""


def _arg(parts: list[bytes], value: bytes) -> None:
    if len(value) < _LARGE:
        parts.append(b"$%d\r\n%b\r\n" % (len(value), value))
    else:
        parts += (b"$%d\r\n" % len(value), value, b"\r\n")


def _command(parts: list[bytes], *args: bytes) -> None:
    parts.append(b"*%d\r\n" % len(args))
    for value in args:
        _arg(parts, value)


def _number(value: float) -> bytes:
    """How redis-py encodes a number: str() of an int, repr() of a float."""
    return (repr(value) if isinstance(value, float) else str(value)).encode()


def pack(ops: Sequence[RedisOp]) -> tuple[list[bytes], int]:
    """The RESP bytes of `ops`, in order, and how many replies they produce."""
    parts: list[bytes] = []
    replies = 0
    for op in ops:
        key = op.key.encode()
        if isinstance(op, HashWrite):
            parts.append(b"*%d\r\n" % (2 + 2 * len(op.fields)))
            _arg(parts, b"HSET")
            _arg(parts, key)
            for name, value in op.fields.items():
                _arg(parts, name.encode())
                _arg(parts, value.encode())
            _command(parts, b"PEXPIREAT", key, b"%d" % op.expire_at_ms)
            replies += 2
        elif isinstance(op, StringWrite):
            _command(parts, b"SET", key, op.value.encode(), b"PXAT", b"%d" % op.expire_at_ms)
            replies += 1
        elif isinstance(op, SortedSetAdd):
            parts.append(b"*%d\r\n" % (2 + 2 * len(op.members)))
            _arg(parts, b"ZADD")
            _arg(parts, key)
            for member, score in op.members.items():
                _arg(parts, _number(score))
                _arg(parts, member.encode())
            trim = b"(" + _number(op.trim_below)
            _command(parts, b"ZREMRANGEBYSCORE", key, b"-inf", trim)
            _command(parts, b"PEXPIRE", key, b"%d" % op.ttl_ms)
            replies += 3
        elif isinstance(op, Delete):
            _command(parts, b"DEL", key)
            replies += 1
    return parts, replies


async def write(redis: Redis, ops: Sequence[RedisOp]) -> None:
    """Execute `ops` in order in one round trip."""
    if not ops:
        return
    parts, replies = pack(ops)
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(parts)
        error = await _read_replies(conn, replies)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    if error is not None:
        raise error


async def write_by_target(targets: RedisTargets, ops: Sequence[RedisOp]) -> None:
    """Execute `ops` on each key's family target (SPEC §8): one round trip per target,
    the targets in parallel, each target's ops in their order.

    A target that fails raises after the others finished; the caller's retry
    sends everything again, which absolute values make harmless.
    """
    groups: dict[int, tuple[Redis, list[RedisOp]]] = {}
    for op in ops:
        client = targets.master_for(op.key)
        groups.setdefault(id(client), (client, []))[1].append(op)
    if len(groups) <= 1:
        for client, group in groups.values():
            await write(client, group)
        return
    results = await asyncio.gather(
        *(write(client, group) for client, group in groups.values()), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _read_replies(
    conn: AbstractConnection, replies: int
) -> redis_errors.ResponseError | None:
    """Read every reply; the first error (a live server's answer) is returned, not raised.

    One timeout of `socket_timeout` covers all the replies, instead of one
    timeout context per reply.
    """
    read = conn.read_response
    first: redis_errors.ResponseError | None = None
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(replies):
                try:
                    await read(disable_decoding=True, timeout=math.inf)
                except redis_errors.ResponseError as exc:
                    first = first or exc
    except TimeoutError:
        raise redis_errors.TimeoutError("Timeout reading the pipeline's replies") from None
    return first
