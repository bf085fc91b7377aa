"""Chaos on the design's Redis topology: masters killed, a family emptied, a Sentinel killed.

The same ground truth as tests/integration/test_chaos.py (a steady load on
all three families, PostgreSQL holding exactly what was produced, every
counter equal to the model, every Redis key equal to what PostgreSQL
implies, on its family's master), with the worker's families on the local
Sentinel topology (streams/tools/stack/sentinel.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from streams.redis_targets import KEY_FAMILIES, RedisTargets, close_client, master_client
from streams.redis_targets import parse_target as _parse
from streams.settings import get_settings
from streams.tools.stack.sentinel import (
    SentinelTopology,
    data_nodes,
    family_url,
    sentinel_env,
    sentinel_nodes,
)
from tests.integration.conftest import IsolatedRun, eventually, isolated_run, stored_count
from tests.integration.load import Load, verify, wait_all_stored, write_report
from tests.integration.test_chaos import CHAOS_ENV, catch_up

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture(scope="module")
def topology() -> Iterator[SentinelTopology]:
    topo = SentinelTopology(get_settings())
    topo.up()
    yield topo
    for node in [*data_nodes(), *sentinel_nodes()]:
        if topo.pid(node) is None:
            topo.restart(node)
    topo.wait_healthy(60)


@asynccontextmanager
async def on_sentinel(
    test_env: dict[str, str], topology: SentinelTopology, name: str, db: int
) -> AsyncIterator[tuple[IsolatedRun, RedisTargets]]:
    """A worker whose three families live on the topology's db `db` (emptied first)."""
    await asyncio.to_thread(topology.wait_healthy, 60)
    settings = get_settings()
    for family in KEY_FAMILIES:
        client = master_client(_parse(family_url(family, db)), settings)
        await client.flushdb()
        await close_client(client)
    env = {**CHAOS_ENV, **sentinel_env(db), "REBUILD_RATE": "100000"}
    async with isolated_run(test_env, f"chaos_{name}", 1, **env) as run:
        targets = RedisTargets.from_settings(run.settings, decode_responses=True)
        try:
            yield run, targets
        finally:
            await targets.aclose()


async def write_gap(run: IsolatedRun, load: Load, killed_at: float) -> float:
    """Seconds from the kill until an event produced half a second after it is stored:
    the agent takes no new batch while its Redis write waits for the new master."""
    await asyncio.sleep(max(0.0, killed_at + 0.5 - time.monotonic()))
    produced = list(load.model.produced)
    await eventually(lambda: stored_count(run.pool, produced), lambda n: n == len(produced),
                     timeout_s=120, interval_s=0.05)  # fmt: skip
    return time.monotonic() - killed_at


async def _finish(
    run: IsolatedRun, targets: RedisTargets, load: Load, name: str, back: asyncio.Task[float]
) -> float:
    await wait_all_stored(run.pool, load.model, timeout_s=180)
    recovered = await back
    await asyncio.sleep(2)  # the last pipelines, the sweeper, a rebuild's tail
    figures = await verify(run.pool, targets, run.settings, load.model)
    write_report(name, {**figures, "recover_s": round(recovered, 1)})
    return recovered


async def test_kill_9_session_master_under_load(
    test_env: dict[str, str], topology: SentinelTopology
) -> None:
    """Sentinel promotes the replica; the worker's writes resume by themselves."""
    async with on_sentinel(test_env, topology, "sessionmaster", 5) as (run, targets):
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        master = topology.master_address("sessions")
        assert master is not None
        topology.kill(topology.node_at(master[1]))
        killed_at = time.monotonic()
        back = catch_up(run, load)
        gap = asyncio.create_task(write_gap(run, load, killed_at))
        await asyncio.sleep(8)
        assert topology.master_address("sessions") not in (None, master)
        load.stop()
        await producing
        await _finish(run, targets, load, "S1. kill -9 session master", back)
        print(f"session master {master} killed: write gap {await gap:.1f} s")
        topology.restart(topology.node_at(master[1]))  # back as a replica of the new master


async def test_ai_master_and_replica_restarted_empty(
    test_env: dict[str, str], topology: SentinelTopology
) -> None:
    """Only the AI family is rebuilt, by the worker itself; the others keep every key."""
    async with on_sentinel(test_env, topology, "aiempty", 6) as (run, targets):
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(4)
        master = topology.master_address("ai")
        assert master is not None
        nodes = [n for n in data_nodes() if n.family == "ai"]
        replica = next(n for n in nodes if n.port != master[1])
        log_before = len(run.worker.log_text())
        topology.kill(replica)
        topology.kill(topology.node_at(master[1]))
        await asyncio.sleep(1)
        topology.restart(topology.node_at(master[1]))  # no persistence: back empty
        topology.restart(replica)
        back = catch_up(run, load)
        await asyncio.sleep(6)
        load.stop()
        await producing
        await _finish(run, targets, load, "S2. AI master and replica restarted empty", back)
        log = run.worker.log_text()[log_before:]
        assert "Redis target of ai lost rpcache's data" in log
        assert "target of sessions lost" not in log and "target of voice lost" not in log


async def test_a_sentinel_killed_changes_nothing(
    test_env: dict[str, str], topology: SentinelTopology
) -> None:
    async with on_sentinel(test_env, topology, "sentinelkill", 7) as (run, targets):
        load = Load(run.publisher, rate=150)
        producing = asyncio.create_task(load.run_for(3600))
        await asyncio.sleep(3)
        masters = {f: topology.master_address(f) for f in KEY_FAMILIES}
        topology.kill(sentinel_nodes()[0])
        back = catch_up(run, load)
        await asyncio.sleep(5)
        assert {f: topology.master_address(f) for f in KEY_FAMILIES} == masters
        load.stop()
        await producing
        await _finish(run, targets, load, "S3. a Sentinel killed", back)
        topology.restart(sentinel_nodes()[0])
