"""RESP for a batch of Redis operations: its bytes, one command at a time, and its replies.

Why not a redis-py pipeline: a batch projects thousands of commands (HSET and
PEXPIREAT for every session and user it touched), and a pipeline's
per-command stack, per-argument encoder, per-reply timeout and response
callbacks cost more CPU in the worker than anything else it does for an
event (README, Performance). Each command is packed by `hiredis.pack_command`
(C; what redis-py itself calls when hiredis is installed): 1.3 µs per op
against 2.3 for the per-argument Python packing it replaced (profile in the
commit). The bytes on the wire are the ones the pipeline sends (unit test),
and every reply is still read. Used by the single-node sink (`sinks.redis`) and
the cluster sink (`sinks.redis_cluster`) alike.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Final

import hiredis
import redis.exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection

from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite

_pack_command: Callable[[tuple[str | bytes | int, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]
"""One command's RESP bytes (str as UTF-8, int in decimal). hiredis's stub types
the argument as a 1-tuple; it takes any length."""


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
    command = _pack_command
    for op in ops:
        key = op.key
        if isinstance(op, HashWrite):
            if asking:
                parts.append(_ASKING)
            parts.append(command(("HSET", key, *chain.from_iterable(op.fields.items()))))
            if asking:
                parts.append(_ASKING)
            parts.append(command(("PEXPIREAT", key, op.expire_at_ms)))
            replies += 2
        elif isinstance(op, StringWrite):
            if asking:
                parts.append(_ASKING)
            parts.append(command(("SET", key, op.value, "PXAT", op.expire_at_ms)))
            replies += 1
        elif isinstance(op, SortedSetAdd):
            if asking:
                parts.append(_ASKING)
            scored: Iterable[bytes | str] = chain.from_iterable(
                (_number(s), m) for m, s in op.members.items()
            )
            parts.append(command(("ZADD", key, *scored)))
            if asking:
                parts.append(_ASKING)
            trim = b"(" + _number(op.trim_below)
            parts.append(command(("ZREMRANGEBYSCORE", key, "-inf", trim)))
            if asking:
                parts.append(_ASKING)
            parts.append(command(("PEXPIRE", key, op.ttl_ms)))
            replies += 3
        elif isinstance(op, Delete):
            if asking:
                parts.append(_ASKING)
            parts.append(command(("DEL", key)))
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
