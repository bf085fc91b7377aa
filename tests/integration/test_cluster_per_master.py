"""Everything read per master on the real Redis Cluster (issue 14, points 3 and 4; SPEC §8).

On the local cluster of `rpcache stack up --redis cluster` (three masters in the
design's ranges, a replica each):

- INFO per master (`streams.observe.redis_info.read_targets`): one row per
  master, labelled `<families>@host:port`, with that master's own policy and
  keys; a master that does not answer (paused) is a down row of its own.
- `rpcache check` (`streams.observe.check`): passes on the healthy cluster,
  naming every master with its slots, replica and policy; after a live reshard
  of three slots of the AI range onto the voice master it FAILS naming those
  slots (`5461-5463`), and passes again once they are moved back.
- The data-loss marker and rebuild per master (`streams.read.rebuild`): a
  worker (design layout) keeps one marker per master; FLUSHALL on the AI
  master (its replica follows) brings back that master's keys only, from
  PostgreSQL, while the session and voice masters' key sets are unchanged.

The module holds `cluster_lock` (streams/tools/stack/cluster.py) while it runs:
it empties a master and moves slots, which another test session on the cluster
must not see. Whatever it changes (slots, keys) it puts back; the cluster is
healthy at the end (`ClusterTopology.problem()` is None), and stopped only if
this module started it.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from schemas.keys import (
    DESIGN_SLOT_RANGES,
    KEY_FAMILIES,
    LOADED_MARKER_KEY,
    ClusterLayout,
    KeyFamily,
    ai_response_key,
    business_day,
    layout_key,
    own_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key,
)
from schemas.slots import SlotRange
from streams.observe.check import CheckResult, check_redis_targets
from streams.observe.redis_info import read_targets
from streams.redis_targets import RedisTargets
from streams.settings import Settings, get_settings
from streams.tools.stack.cluster import (
    HOST,
    ClusterTopology,
    Shard,
    cluster_env,
    cluster_lock,
    cluster_url,
)
from streams.tools.stack.common import StackError
from streams.tools.stack.sentinel import POLICIES
from tests import needs
from tests.integration.cluster_admin import admin, move_slots
from tests.integration.conftest import eventually, isolated_run, rpcache_check

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel")  # its own cluster (a cluster run holds the lock)
AUDIO = base64.b64encode(b"RIFF" + b"\0" * 64).decode()
MOVED = SlotRange(5461, 5463)
"""The slots of the AI range the check test reshards onto the voice master (and back)."""
REDIS_DB = 6
"""REDIS_URL's db of the rebuild test's worker (every family is on the cluster)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    if shutil.which("redis-server") is None:
        needs.missing("redis-server is not installed: bash scripts/install-system-deps.sh")
    topology = ClusterTopology(get_settings())
    with cluster_lock(topology.home, timeout_s=600):
        was_running = topology.running()
        try:
            topology.up()
        except StackError as exc:
            pytest.fail(f"the cluster does not start: {exc}")
        yield topology
        topology.wait_healthy(60)
        assert topology.problem() is None
        if not was_running:
            topology.down()


def _settings(layout: ClusterLayout = "design", **update: object) -> Settings:
    url = SecretStr(cluster_url())
    return get_settings().model_copy(
        update={
            "redis_sessions_url": url,
            "redis_ai_url": url,
            "redis_voice_url": url,
            "redis_cluster_layout": layout,
            **update,
        }
    )


def _shards(cluster: ClusterTopology) -> dict[KeyFamily, Shard]:
    return {s.family: s for s in cluster.shards()}


def _master(shard: Shard) -> int:
    assert shard.master is not None, shard
    return shard.master


@asynccontextmanager
async def _node(port: int) -> AsyncIterator[Redis]:
    client = Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


async def _keys_on(port: int) -> set[str]:
    """Every key stored on one node (SCAN on that node alone)."""
    client = Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5)
    try:
        return {str(k) async for k in client.scan_iter(count=1000)}
    finally:
        await client.aclose()


# --- INFO per master -------------------------------------------------------------------
async def test_info_is_read_on_every_master(cluster: ClusterTopology) -> None:
    shards = _shards(cluster)
    run = uuid.uuid4().hex[:8]
    written = {"sessions": 5, "ai": 7, "voice": 9}
    keys = {
        f: [own_key(f"rpcache:infotest:{run}:{i}", shards[f].slots) for i in range(n)]
        for f, n in written.items()
    }
    targets = RedisTargets.from_settings(_settings(), decode_responses=True)
    cluster_client = targets.masters["sessions"]
    try:
        for family_keys in keys.values():
            for key in family_keys:
                await cluster_client.set(key, "1", ex=120)
        rows = await read_targets(targets, 2.0)
        assert [t.target for t in rows] == [
            f"sessions+ai+voice@{HOST}:{_master(shards[f])}" for f in KEY_FAMILIES
        ]
        for family, row in zip(KEY_FAMILIES, rows, strict=True):
            f = row.figures
            assert f is not None, row.error
            assert (f.node, f.role) == (f"{HOST}:{_master(shards[family])}", "master")
            assert f.policy == POLICIES[family]
            assert f.maxmemory == 256 * 1024 * 1024
            assert f.keys >= written[family], (family, f.keys)  # that master's own keys

        # The voice master stops answering clients (as a hung server; the cluster bus
        # goes on, so nothing fails over): its row alone is down.
        voice = _master(shards["voice"])
        admin(voice).execute_command("CLIENT", "PAUSE", 1500, "ALL")
        rows = await read_targets(targets, 0.5)
        assert [(t.target.rpartition("@")[2], t.up) for t in rows] == [
            (f"{HOST}:{_master(shards['sessions'])}", True),
            (f"{HOST}:{_master(shards['ai'])}", True),
            (f"{HOST}:{voice}", False),
        ]
        assert rows[2].error == "TimeoutError()"
    finally:
        admin(_master(shards["voice"])).execute_command("CLIENT", "UNPAUSE")
        for family_keys in keys.values():
            for key in family_keys:
                await cluster_client.delete(key)
        await targets.aclose()


# --- rpcache check -----------------------------------------------------------------------
def _failed(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if not r.ok]


async def test_check_names_masters_and_fails_on_a_reshard_of_a_range(
    cluster: ClusterTopology,
) -> None:
    shards = _shards(cluster)
    ai, voice = _master(shards["ai"]), _master(shards["voice"])
    settings = _settings(check_timeout_s=3.0)
    results = await check_redis_targets(settings)
    assert _failed(results) == [], [r.line() for r in results]
    by_name = {r.name: r for r in results}
    for family in KEY_FAMILIES:
        line = by_name[f"redis@{HOST}:{_master(shards[family])}"]
        assert f"slots {DESIGN_SLOT_RANGES[family]} ({family} range)" in line.detail
        assert f"maxmemory-policy {POLICIES[family]}" in line.detail
        (replica,) = shards[family].replicas
        assert f"replica {HOST}:{replica} synced" in line.detail
    env = {**cluster_env(), "CHECK_TIMEOUT_S": "3"}
    status, out = await rpcache_check(env)
    unhealthy = next((line for line in out.splitlines() if line.startswith("unhealthy:")), "")
    assert "redis" not in unhealthy, out  # the heartbeat may fail here (no worker): not Redis

    try:
        await asyncio.to_thread(move_slots, range(MOVED.lo, MOVED.hi + 1), ai, voice)

        async def voice_line() -> CheckResult:
            found = await check_redis_targets(settings)
            return next(r for r in found if r.name == f"redis@{HOST}:{voice}")

        # Every node learns the new owners by gossip; the check reads one node's map.
        line = await eventually(
            voice_line, lambda r: "5461-5463" in r.detail, timeout_s=15, interval_s=0.5
        )
        assert not line.ok
        assert "slots 5461-5463 of the ai range (5461-10922) are on this voice master" in (
            line.detail
        ), line.line()
        status, out = await rpcache_check(env)
        assert status == 1
        assert f"FAIL  redis@{HOST}:{voice}" in out and "5461-5463" in out, out
        unhealthy = next(line for line in out.splitlines() if line.startswith("unhealthy:"))
        assert f"redis@{HOST}:{voice}" in unhealthy, out
    finally:
        await asyncio.to_thread(move_slots, range(MOVED.lo, MOVED.hi + 1), voice, ai)
    await eventually(lambda: check_redis_targets(settings), lambda r: not _failed(r), timeout_s=15)
    await asyncio.to_thread(cluster.wait_healthy, 30)


# --- the data-loss marker and rebuild per master ------------------------------------------
async def test_a_master_emptied_is_rebuilt_for_its_slots_only(
    test_env: dict[str, str], cluster: ClusterTopology
) -> None:
    """FLUSHALL on the AI master (its replica follows, as a master restarted empty and
    resynced): the worker notices that master's marker is gone and rebuilds the keys
    stored in its slots from PostgreSQL; the other masters are not written."""
    await asyncio.to_thread(cluster.wait_healthy, 60)
    shards = _shards(cluster)
    ports = {f: _master(shards[f]) for f in KEY_FAMILIES}
    markers = {f: own_key(LOADED_MARKER_KEY, shards[f].slots) for f in KEY_FAMILIES}
    run_id = uuid.uuid4().hex[:6]
    env = {**cluster_env(), "REDIS_WATCH_INTERVAL_S": "1", "REBUILD_RATE": "100000"}
    async with isolated_run(test_env, "clusterrebuild", REDIS_DB, **env) as run:
        pub = run.publisher
        user = f"cr-{run_id}"
        sid = await pub.session_started(user, speaker_id=5)
        prompts = [f"cr-{run_id}-p-{i}" for i in range(20)]
        texts = [f"cr-{run_id}-t-{i}" for i in range(3)]
        for prompt in prompts:
            await pub.ai_response(
                user, sid, prompt=prompt, response="r", provider="g", model="m", latency_ms=5
            )
        for text in texts:
            await pub.voice_synthesized(
                user, sid, speaker_id=5, text=text, audio_b64=AUDIO, latency_ms=5
            )
        ai_keys = [ai_response_key(p) for p in prompts]
        voice_keys = [voice_key(5, t) for t in texts]
        # The day's stats hash too: the leader's stats timer writes it some time after the
        # events, and it must be there before the snapshot the test compares with.
        today = stats_key(business_day(datetime.now(UTC), run.settings.tz))
        mine = [session_key(sid), user_state_key(user), *ai_keys, *voice_keys, today]
        await eventually(lambda: run.keys.exists(*mine), lambda n: n == len(mine), timeout_s=60)

        async def marked() -> list[int]:
            found = []
            for family in KEY_FAMILIES:
                async with _node(ports[family]) as node:
                    found.append(int(await node.exists(markers[family])))
            return found

        await eventually(marked, lambda m: m == [1, 1, 1], timeout_s=30)  # one per master
        stored_ai = {layout_key(k, "design") for k in ai_keys}
        before = {f: await _keys_on(p) for f, p in ports.items()}
        assert stored_ai <= before["ai"]
        assert {layout_key(k, "design") for k in voice_keys} <= before["voice"]
        assert layout_key(session_key(sid), "design") in before["sessions"]
        log_before = len(run.worker.log_text())

        async with _node(ports["ai"]) as node:
            await node.flushall()

        await eventually(
            lambda: _keys_on(ports["ai"]),
            lambda keys: stored_ai | {markers["ai"]} <= keys,
            timeout_s=60,
        )
        await asyncio.sleep(1.5)  # a second look of the watch: nothing more is written
        after = {f: await _keys_on(p) for f, p in ports.items()}
        # The AI master: exactly the keys PostgreSQL implies for its slots, and its marker.
        assert after["ai"] == stored_ai | {markers["ai"]}
        # The other masters: the same keys as before the loss.
        assert after["sessions"] == before["sessions"]
        assert after["voice"] == before["voice"]
        (replica,) = shards["ai"].replicas
        await eventually(lambda: _keys_on(replica), lambda keys: keys == after["ai"])
        log = run.worker.log_text()[log_before:]
        assert f"lost rpcache's data on master {HOST}:{ports['ai']}" in log, log[-3000:]
        for other in ("sessions", "voice"):
            assert f"lost rpcache's data on master {HOST}:{ports[other]}" not in log
        assert "Redis rebuild of sessions/ai/voice on" in log
        await run.keys.delete(*mine)
