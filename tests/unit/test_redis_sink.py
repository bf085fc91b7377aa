"""The Redis sink packs its own RESP: it must be byte for byte what a redis-py pipeline sends."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite
from streams.sinks.resp import pack

OPS: list[RedisOp] = [
    HashWrite(
        "session:5f0c",
        {"user_id": "u1", "conversation_context": '{"scene":"カフェ"}', "speaker_id": "6"},
        1_764_110_000_123,
    ),
    StringWrite("voice:6:ab", "UklGRg==" * 5000, 1_764_196_400_000),  # a large argument
    StringWrite("ai_response:cd", '{"response":"はい"}', 1_764_113_600_000),
    SortedSetAdd(
        "metrics:response_time:1m",
        {"12.5:e1": 1_764_110_000.123456, "7:e2": 1_764_110_001.0},
        1_764_109_940.5,
        300_000,
    ),
    Delete("session:gone"),
]


def _pipeline_bytes(ops: list[RedisOp]) -> bytes:
    """What `Pipeline.execute` would write for the same ops (the sink's former code)."""
    pipe = Redis().pipeline(transaction=False)
    for op in ops:
        if isinstance(op, HashWrite):
            pipe.hset(op.key, mapping=op.fields)  # type: ignore[arg-type]
            pipe.pexpireat(op.key, op.expire_at_ms)
        elif isinstance(op, StringWrite):
            pipe.set(op.key, op.value, pxat=op.expire_at_ms)
        elif isinstance(op, SortedSetAdd):
            pipe.zadd(op.key, op.members)  # type: ignore[arg-type]
            pipe.zremrangebyscore(op.key, "-inf", f"({op.trim_below}")
            pipe.pexpire(op.key, op.ttl_ms)
        elif isinstance(op, Delete):
            pipe.delete(op.key)
    packed = Connection().pack_commands([args for args, _ in pipe.command_stack])
    return b"".join(bytes(p) for p in packed)


def test_packed_bytes_equal_redis_py_pipeline() -> None:
    parts, replies = pack(OPS)
    assert b"".join(parts) == _pipeline_bytes(OPS)
    assert replies == 2 + 1 + 1 + 3 + 1


def test_nothing_to_write_packs_nothing() -> None:
    assert pack([]) == ([], 0)


def test_asking_precedes_every_command_and_answers_once_each() -> None:
    """An ASK redirect's ops: each command after its own ASKING (Redis Cluster spec)."""
    plain, replies = pack(OPS)
    asked, asked_replies = pack(OPS, asking=True)
    assert asked_replies == 2 * replies
    assert asked == [p for part in plain for p in (b"*1\r\n$6\r\nASKING\r\n", part)]
