"""Chaos on a Redis Cluster target: a master killed, a live reshard under load.

The same ground truth as tests/integration/test_chaos.py (a steady load on
all three topics, PostgreSQL holding exactly what was produced, every
counter equal to the model, every Redis key equal to what PostgreSQL implies
at the key stored for it), with every key family on the local Redis Cluster
(streams/tools/stack/cluster.py) in the design layout (SPEC §8: each
family's keys on the master of its slot range).

A cluster has database 0 only, so each scenario flushes the masters first,
holding the local cluster's test lock (tests/integration/topology.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg
import pytest
from redis.asyncio import RedisCluster

from streams.redis_targets import RedisTargets
from streams.settings import get_settings
from streams.tools.stack.cluster import (
    ClusterTopology,
    cluster_env,
    cluster_lock,
    cluster_nodes,
    cluster_url,
)
from tests.integration.conftest import IsolatedRun, isolated_run
from tests.integration.load import Load, verify, wait_all_stored, write_report
from tests.integration.test_chaos import CHAOS_ENV, catch_up

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture(scope="module")
def topology() -> Iterator[ClusterTopology]:
    topo = ClusterTopology(get_settings())
    with cluster_lock(topo.home, timeout_s=600):  # these tests flush every master
        was_running = topo.running()
        topo.up()
        yield topo
        for node in cluster_nodes():
            if topo.pid(node) is None:
                topo.restart(node)
        topo.wait_healthy(60)
        if not was_running:
            topo.down()


async def _flush(url: str) -> None:
    client = RedisCluster.from_url(url.replace("redis+cluster://", "redis://").split(",")[0])
    try:
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        await client.aclose()


@asynccontextmanager
async def on_cluster(
    test_env: dict[str, str], topology: ClusterTopology, name: str
) -> AsyncIterator[tuple[IsolatedRun, RedisTargets]]:
    """A worker whose three families live on the cluster (flushed first), design layout."""
    await asyncio.to_thread(topology.wait_healthy, 60)
    await _flush(cluster_url())
    env = {**CHAOS_ENV, **cluster_env(), "REBUILD_RATE": "100000"}
    async with isolated_run(test_env, f"chaos_{name}", 1, **env) as run:
        targets = RedisTargets.from_settings(run.settings, decode_responses=True)
        try:
            yield run, targets
        finally:
            await targets.aclose()


async def store_gaps(pool: asyncpg.Pool, start: datetime, end: datetime) -> dict[str, float]:
    """The longest wait, in seconds, between two stored events of each source topic
    (by its suffix: session-events, inference-events, synthesis-events) within
    [start, end]: how long each agent's writes stalled."""
    rows = await pool.fetch(
        """
        SELECT topic, extract(epoch FROM max(gap))::float8 AS gap FROM (
            SELECT topic, stored_at - lag(stored_at) OVER (
                       PARTITION BY topic ORDER BY stored_at) AS gap
            FROM events WHERE stored_at BETWEEN $1 AND $2) AS g
        GROUP BY topic
        """,
        start,
        end,
    )
    return {r["topic"].rsplit(".", 1)[-1]: round(r["gap"] or 0.0, 2) for r in rows}


async def _finish(
    run: IsolatedRun, targets: RedisTargets, load: Load, name: str, back: asyncio.Task[float]
) -> dict[str, object]:
    await wait_all_stored(run.pool, load.model, timeout_s=180)
    recovered = await back
    await asyncio.sleep(2)  # the last pipelines, the sweeper, a rebuild's tail
    figures = await verify(run.pool, targets, run.settings, load.model)
    report: dict[str, object] = {**figures, "recover_s": round(recovered, 1)}
    write_report(name, report)
    return report


async def _now(pool: asyncpg.Pool) -> datetime:
    value: datetime = await pool.fetchval("SELECT now()")
    return value


async def test_kill_9_ai_master_under_load(
    test_env: dict[str, str], topology: ClusterTopology
) -> None:
    """The AI master's replica is promoted; the AI writes resume by themselves and the
    session and voice shards' writes never stall."""
    async with on_cluster(test_env, topology, "clusterai") as (run, targets):
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        ai = next(s for s in topology.shards() if s.family == "ai")
        assert ai.master is not None
        before = await _now(run.pool)
        topology.kill(topology.node_at(ai.master))
        killed_at = time.monotonic()
        back = catch_up(run, load)
        await asyncio.sleep(10)
        promoted = next(s for s in topology.shards() if s.family == "ai").master
        assert promoted not in (None, ai.master)
        after = await _now(run.pool)
        load.stop()
        await producing
        gaps = await store_gaps(run.pool, before, after)
        await _finish(run, targets, load, "C1. kill -9 AI master (cluster)", back)
        print(f"AI master {ai.master} killed; longest store gap per kind: {gaps}")
        assert gaps["session-events"] < 2.0 and gaps["synthesis-events"] < 2.0, gaps
        assert time.monotonic() - killed_at > 0
        topology.restart(topology.node_at(ai.master))  # back as the new master's replica


def _reshard(source: int, target: int, slots: int) -> None:
    """redis-cli's live resharding: `slots` slots and their keys from one master to
    another (MIGRATING/IMPORTING, MIGRATE per key: clients see MOVED and ASK)."""
    ids = {}
    for port in (source, target):
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "CLUSTER", "MYID"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        ids[port] = out.stdout.strip()
    subprocess.run(
        [
            "redis-cli", "--cluster", "reshard", f"127.0.0.1:{source}",
            "--cluster-from", ids[source], "--cluster-to", ids[target],
            "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "50",
        ],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip


async def test_live_reshard_under_load(test_env: dict[str, str], topology: ClusterTopology) -> None:
    """300 slots of the sessions range move to the voice master and back while the
    worker writes: MOVED and ASK are absorbed, nothing is lost or counted twice."""
    async with on_cluster(test_env, topology, "clusterreshard") as (run, targets):
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        shards = {s.family: s for s in topology.shards()}
        sessions, voice = shards["sessions"].master, shards["voice"].master
        assert sessions is not None and voice is not None
        started = time.monotonic()
        await asyncio.to_thread(_reshard, sessions, voice, 300)
        moved_s = time.monotonic() - started
        await asyncio.sleep(2)
        await asyncio.to_thread(_reshard, voice, sessions, 300)
        back = catch_up(run, load)
        await asyncio.sleep(2)
        load.stop()
        await producing
        await _finish(run, targets, load, "C2. live reshard of 300 slots (cluster)", back)
        print(f"300 slots moved in {moved_s:.1f} s and back, under load")
        await asyncio.to_thread(topology.wait_healthy, 60)


async def test_voice_master_and_replica_restarted_empty(
    test_env: dict[str, str], topology: ClusterTopology
) -> None:
    """The voice shard comes back empty (master and replica, no persistence): the worker
    rebuilds that master's slots alone; the other masters keep every key."""
    async with on_cluster(test_env, topology, "clustervoice") as (run, targets):
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        voice = next(s for s in topology.shards() if s.family == "voice")
        assert voice.master is not None and voice.replicas
        others = [s.master for s in topology.shards() if s.family != "voice"]
        log_before = len(run.worker.log_text())
        for port in (*voice.replicas, voice.master):
            topology.kill(topology.node_at(port))
        await asyncio.sleep(1)
        for port in (voice.master, *voice.replicas):
            topology.restart(topology.node_at(port))  # empty, rejoining from nodes.conf
        back = catch_up(run, load)
        await asyncio.to_thread(topology.wait_healthy, 60)
        await asyncio.sleep(4)
        load.stop()
        await producing
        await _finish(run, targets, load, "C3. voice master and replica restarted empty", back)
        log = run.worker.log_text()[log_before:]
        assert f"master 127.0.0.1:{voice.master}" in log and "those slots only" in log, log[-3000:]
        assert not any(f"master 127.0.0.1:{port}" in log for port in others), log[-3000:]
