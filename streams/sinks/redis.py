"""The Redis sink: one pipeline per batch of absolute writes.

No MULTI: every operation is idempotent (absolute values, absolute expiry),
so a pipeline cut in half by a crash is simply written again on redelivery.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite


async def write(redis: Redis, ops: Sequence[RedisOp]) -> None:
    """Execute `ops` in order in one round trip."""
    if not ops:
        return
    pipe = redis.pipeline(transaction=False)
    for op in ops:
        if isinstance(op, HashWrite):
            pipe.hset(op.key, mapping=op.fields)  # type: ignore[arg-type]
            pipe.pexpireat(op.key, op.expire_at_ms)
        elif isinstance(op, StringWrite):
            pipe.set(op.key, op.value, pxat=op.expire_at_ms)
        elif isinstance(op, SortedSetAdd):
            pipe.zadd(op.key, op.members)
            pipe.zremrangebyscore(op.key, "-inf", f"({op.trim_below}")
            pipe.pexpire(op.key, op.ttl_ms)
        elif isinstance(op, Delete):
            pipe.delete(op.key)
    await pipe.execute()
