"""The Redis sink alone: one node against a Redis Cluster, and hand-packed RESP against
redis-py's cluster pipeline (`rpcache bench --only sink`).

Issue 14 asks to keep the hand-packed RESP path on a cluster only if it stays
faster than redis-py's `ClusterPipeline`. Every variant writes the same
batches of the worker's own op kinds (`streams.projections`: session and
user hashes, AI responses, voice clips, latency sorted sets), with
absolute values and expiries, in batches the size the worker projects:

- **single**: `sinks.redis.write_by_target` on one Redis (the default
  topology), one round trip per batch;
- **cluster**: the same function on the local Redis Cluster
  (`rpcache stack up --redis cluster`, the design layout): one round trip
  per master per batch, the masters in parallel (`sinks.redis_cluster`);
- **cluster, hash layout**: the same, with the SPEC §4 keys as they are
  (no tag to compute);
- **cluster, redis-py pipeline**: the same commands queued on redis-py's
  `RedisCluster.pipeline()` and executed per batch (it too splits by node).

The variants run in alternation, `rounds` times each, on a quiet key space
(the cluster's masters and the single node's db are flushed first), and the
median of each is reported with its ratio to **single**, in ops/s (an op is
one key's write: 1 to 3 commands).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr
from redis.asyncio import Redis, RedisCluster

from schemas.keys import ai_response_key, metrics_key, session_key, user_state_key, voice_key
from streams.projections import HashWrite, RedisOp, SortedSetAdd, StringWrite
from streams.redis_targets import RedisTargets
from streams.security import redis_options
from streams.settings import Settings
from streams.sinks.redis import write_by_target
from streams.tools.bench.stats import ratio
from streams.tools.stack.cluster import ClusterTopology, cluster_url

BATCH_OPS = 1_000
"""Ops per batch: about what a 500-event batch of the workload projects."""


@dataclass(frozen=True, slots=True)
class SinkFigure:
    variant: str
    ops: int
    ops_per_s: float
    vs_single: float


def workload(batches: int, run: str) -> list[list[RedisOp]]:
    """`batches` batches of BATCH_OPS ops: 40 % session hashes, 20 % user hashes,
    20 % AI responses (~300 B), 10 % voice clips (~8 KB), 10 % latency sets."""
    expire = int((datetime.now(UTC) + timedelta(minutes=10)).timestamp() * 1000)
    answer = "x" * 300
    clip = "a" * 8_192
    out: list[list[RedisOp]] = []
    n = 0
    for _ in range(batches):
        batch: list[RedisOp] = []
        while len(batch) < BATCH_OPS:
            n += 1
            fields = {"user_id": f"u{n}", "status": "active", "speaker_id": "3", "x": str(n)}
            batch += [
                HashWrite(session_key(f"{run}-{n}"), fields, expire),
                HashWrite(session_key(f"{run}-{n}b"), fields, expire),
                HashWrite(session_key(f"{run}-{n}c"), fields, expire),
                HashWrite(session_key(f"{run}-{n}d"), fields, expire),
                HashWrite(user_state_key(f"{run}-u{n}"), {"current_session_id": "s"}, expire),
                HashWrite(user_state_key(f"{run}-v{n}"), {"current_session_id": "s"}, expire),
                StringWrite(ai_response_key(f"{run} {n}"), answer, expire),
                StringWrite(ai_response_key(f"{run} {n}b"), answer, expire),
                StringWrite(voice_key(n % 10, f"{run} {n}"), clip, expire),
                SortedSetAdd(
                    metrics_key("response_time", "1m"), {f"{n}:{run}": float(n)}, 0.0, 60_000
                ),
            ]
        out.append(batch)
    return out


async def _redis_py_pipeline(
    cluster: RedisCluster, targets: RedisTargets, ops: list[RedisOp]
) -> None:
    """The same commands on redis-py's cluster pipeline, at the same stored keys."""
    pipe = cluster.pipeline()
    for op in ops:
        key = targets.key(op.key)
        if isinstance(op, HashWrite):
            pipe.hset(key, mapping=op.fields)  # type: ignore[arg-type]
            pipe.pexpireat(key, op.expire_at_ms)
        elif isinstance(op, StringWrite):
            pipe.set(key, op.value, pxat=op.expire_at_ms)
        elif isinstance(op, SortedSetAdd):
            pipe.zadd(key, op.members)  # type: ignore[arg-type,unused-ignore]
            pipe.zremrangebyscore(key, "-inf", f"({op.trim_below!r}")
            pipe.pexpire(key, op.ttl_ms)
    await pipe.execute()


async def run_sink(base: Settings, single_db: int, batches: int, rounds: int) -> list[SinkFigure]:
    """Median ops/s of each variant over `rounds` alternated rounds (module docstring)."""
    topology = ClusterTopology(base)
    was_running = topology.running()
    topology.up()
    url = SecretStr(cluster_url())
    on_cluster = base.model_copy(
        update={
            "redis_sessions_url": url,
            "redis_ai_url": url,
            "redis_voice_url": url,
            "redis_cluster_layout": "design",
        }
    )
    single_url = base.redis_url.get_secret_value().rsplit("/", 1)[0] + f"/{single_db}"
    single_client = Redis.from_url(single_url, **redis_options(base, single_url))
    single = RedisTargets.single(single_client, single_url)
    cluster = RedisTargets.from_settings(on_cluster)
    hashed = RedisTargets.from_settings(
        on_cluster.model_copy(update={"redis_cluster_layout": "hash"})
    )
    client = cluster.masters["sessions"]
    assert isinstance(client, RedisCluster)
    work = workload(batches, f"sink{time.monotonic_ns() % 1_000_000}")
    total = sum(len(b) for b in work)

    async def timed(write: Callable[[list[RedisOp]], Awaitable[None]]) -> float:
        started = time.perf_counter()
        for batch in work:
            await write(list(batch))
        return total / (time.perf_counter() - started)

    variants: dict[str, Callable[[list[RedisOp]], Awaitable[None]]] = {
        "single": lambda ops: write_by_target(single, ops),
        "cluster": lambda ops: write_by_target(cluster, ops),
        "cluster, hash layout": lambda ops: write_by_target(hashed, ops),
        "cluster, redis-py pipeline": lambda ops: _redis_py_pipeline(client, cluster, ops),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    try:
        await single_client.flushdb()
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
        for write in variants.values():  # warm-up: connections, slot map, tag tables
            await write(list(work[0]))
        for _ in range(rounds):
            for name, write in variants.items():
                rates[name].append(await timed(write))
    finally:
        await single_client.flushdb()
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
        await single.aclose()
        await cluster.aclose()
        await hashed.aclose()
        if not was_running:
            topology.down()
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return [
        SinkFigure(name, total, rate, ratio(rate, medians["single"]))
        for name, rate in medians.items()
    ]
