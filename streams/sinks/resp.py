"""RESP, packed by hand: the bytes of a batch of Redis operations, and its replies.

Why by hand: a batch projects thousands of commands (HSET and PEXPIREAT for
every session and user it touched), and a redis-py pipeline's per-command
stack, per-argument encoder, per-reply timeout and response callbacks cost
more CPU in the worker than anything else it does for an event (README,
Performance). The bytes on the wire are the ones the pipeline sends, and
every reply is still read. Used by the single-node sink (`sinks.redis`) and
the cluster sink (`sinks.redis_cluster`) alike.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Final

import redis.exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite

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


_ASKING = b"*1\r\n$6\r\nASKING\r\n"
"""Redis Cluster's one-command pass into a slot being imported (the ASK redirect)."""


def pack(ops: Sequence[RedisOp], asking: bool = False) -> tuple[list[bytes], int]:
    """The RESP bytes of `ops`, in order, and how many replies they produce.

    `asking`: each command preceded by ASKING (each has a reply), for ops an
    ASK redirect sent to the node importing their slot (Redis Cluster spec,
    "ASK redirection").
    """
    parts: list[bytes] = []
    replies = 0
    for op in ops:
        key = op.key.encode()
        if isinstance(op, HashWrite):
            if asking:
                parts.append(_ASKING)
            parts.append(b"*%d\r\n" % (2 + 2 * len(op.fields)))
            _arg(parts, b"HSET")
            _arg(parts, key)
            for name, value in op.fields.items():
                _arg(parts, name.encode())
                _arg(parts, value.encode())
            if asking:
                parts.append(_ASKING)
            _command(parts, b"PEXPIREAT", key, b"%d" % op.expire_at_ms)
            replies += 2
        elif isinstance(op, StringWrite):
            if asking:
                parts.append(_ASKING)
            _command(parts, b"SET", key, op.value.encode(), b"PXAT", b"%d" % op.expire_at_ms)
            replies += 1
        elif isinstance(op, SortedSetAdd):
            if asking:
                parts.append(_ASKING)
            parts.append(b"*%d\r\n" % (2 + 2 * len(op.members)))
            _arg(parts, b"ZADD")
            _arg(parts, key)
            for member, score in op.members.items():
                _arg(parts, _number(score))
                _arg(parts, member.encode())
            trim = b"(" + _number(op.trim_below)
            if asking:
                parts.append(_ASKING)
            _command(parts, b"ZREMRANGEBYSCORE", key, b"-inf", trim)
            if asking:
                parts.append(_ASKING)
            _command(parts, b"PEXPIRE", key, b"%d" % op.ttl_ms)
            replies += 3
        elif isinstance(op, Delete):
            if asking:
                parts.append(_ASKING)
            _command(parts, b"DEL", key)
            replies += 1
    if asking:
        replies *= 2  # ASKING answers +OK before each command
    return parts, replies


REPLIES: Final[dict[type[RedisOp], int]] = {
    HashWrite: 2,
    StringWrite: 1,
    SortedSetAdd: 3,
    Delete: 1,
}
"""Commands (so replies) `pack` sends per kind of op."""


async def read_replies(
    conn: AbstractConnection, replies: int
) -> list[tuple[int, redis_errors.ResponseError]]:
    """Read every reply; the error replies (a live server's answers) come back with
    their position, not raised.

    One timeout of `socket_timeout` covers all the replies, instead of one
    timeout context per reply.
    """
    read = conn.read_response
    errors: list[tuple[int, redis_errors.ResponseError]] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for i in range(replies):
                try:
                    await read(disable_decoding=True, timeout=math.inf)
                except redis_errors.ResponseError as exc:
                    errors.append((i, exc))
    except TimeoutError:
        raise redis_errors.TimeoutError("Timeout reading the pipeline's replies") from None
    return errors
