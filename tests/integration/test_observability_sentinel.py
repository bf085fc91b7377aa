"""/metrics and /dashboard.json with a Redis target per family (SPEC §8): a row each.

A worker on the local sentinel topology (`streams/tools/stack/sentinel.py`,
db 9 of every node: no other test uses it) reports three targets, `sessions`,
`ai` and `voice`, each read on the master its Sentinels name now: the node's
host:port, role `master`, the family's policy and maxmemory. Then the AI master
is paused (`CLIENT PAUSE … ALL`: every client command waits, as on a hung
server) while the Sentinels are told to wait longer than the pause before
calling it down, so no failover moves anything: the AI target alone shows as
down, the session and voice targets keep their figures, and the dashboard's
`redis` indicator names the AI target; when the pause ends, all three are up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from streams.redis_targets import KEY_FAMILIES
from streams.settings import get_settings
from streams.tools.stack.sentinel import (
    HOST,
    POLICIES,
    SENTINEL_PORTS,
    SentinelTopology,
    sentinel_env,
)
from tests.integration.conftest import LOG_DIR, RUN, IsolatedRun, eventually, isolated_run
from tests.integration.test_observability import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Obs,
    Samples,
    free_port,
    value,
)

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel")
"""Runs whatever topology the run's shared worker uses: this worker's URLs are its own."""
DB = 9
MAXMEMORY = 256 * 1024 * 1024
PAUSE_MS = 12_000
"""How long the AI master stays paused: several of the monitor's 2 s reads."""
SCREENSHOT = LOG_DIR / f"{RUN}-dashboard-sentinel-ai-down.png"
DOWN_AFTER_MS = 1000
"""The topology's `down-after-milliseconds` (restored after the pause)."""


@pytest.fixture(scope="module")
def topology() -> Iterator[SentinelTopology]:
    topo = SentinelTopology(get_settings())
    topo.up()
    topo.wait_healthy(60)
    yield topo


@dataclass
class SentinelObs:
    obs: Obs
    topology: SentinelTopology


@pytest.fixture(scope="module")
async def sobs(test_env: dict[str, str], topology: SentinelTopology) -> AsyncIterator[SentinelObs]:
    port = free_port()
    env = {**sentinel_env(DB), "WORKER_WEB_ENABLED": "true", "WORKER_WEB_PORT": str(port)}
    run: IsolatedRun
    async with (
        isolated_run(test_env, "obssentinel", DB, **env) as run,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
    ):
        yield SentinelObs(Obs(run, f"http://127.0.0.1:{port}", http), topology)


def masters(topology: SentinelTopology) -> dict[str, str]:
    """Each family's master as the Sentinels name it now: `host:port`."""
    out: dict[str, str] = {}
    for family in KEY_FAMILIES:
        address = topology.master_address(family)
        assert address is not None, family
        out[family] = f"{address[0]}:{address[1]}"
    return out


def answered(m: Samples) -> dict[str, tuple[str, str, str]]:
    """target → (node, role, maxmemory_policy) of `rpcache_redis_info`."""
    out: dict[str, tuple[str, str, str]] = {}
    for (name, labels), v in m.items():
        if name == "rpcache_redis_info" and v == 1:
            d = dict(labels)
            out[d["target"]] = (d["node"], d["role"], d["maxmemory_policy"])
    return out


def ups(m: Samples) -> dict[str, float]:
    return {
        dict(labels)["target"]: v for (name, labels), v in m.items() if name == "rpcache_redis_up"
    }


async def test_a_row_per_target_each_on_its_master(sobs: SentinelObs) -> None:
    obs = sobs.obs
    now = masters(sobs.topology)
    m = await eventually(obs.metrics, lambda m: ups(m) == dict.fromkeys(KEY_FAMILIES, 1.0))
    assert answered(m) == {f: (now[f], "master", POLICIES[f]) for f in KEY_FAMILIES}
    for family in KEY_FAMILIES:
        assert value(m, "rpcache_redis_maxmemory_bytes", target=family) == MAXMEMORY
        assert (value(m, "rpcache_redis_used_memory_bytes", target=family) or 0) > 0
        assert (value(m, "rpcache_redis_connected_clients", target=family) or 0) >= 1
    assert value(m, "rpcache_source_up", source="redis") == 1

    d = await obs.dashboard()
    rows = d["redis"]["targets"]
    assert [(r["target"], r["up"], r["node"], r["role"], r["policy"]) for r in rows] == [
        (f, True, now[f], "master", POLICIES[f]) for f in KEY_FAMILIES
    ]
    assert d["redis"]["down"] == []
    assert d["redis"]["memory_target"] in KEY_FAMILIES


async def _sentinels_down_after(ms: int) -> None:
    """`down-after-milliseconds` of the ai master on every Sentinel."""
    for port in SENTINEL_PORTS:
        sentinel = Redis(host=HOST, port=port, socket_timeout=2)
        try:
            await sentinel.execute_command("SENTINEL", "SET", "ai", "down-after-milliseconds", ms)
        finally:
            await sentinel.aclose()


async def _open_dashboard(stack: AsyncExitStack, base: str) -> Any:
    """The live page in headless Chromium (None without Debian's chromium)."""
    if CHROMIUM is None:
        return None
    from playwright.async_api import async_playwright

    pw = await stack.enter_async_context(async_playwright())
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    stack.push_async_callback(browser.close)
    page = await browser.new_page(viewport={"width": 1440, "height": 1000})
    await page.goto(f"{base}/dashboard", wait_until="load")
    await page.wait_for_selector('#status[data-state="live"]', timeout=15_000)
    await page.wait_for_selector('#redis-targets tr[data-target="ai"][data-up="true"]')
    return page


async def test_a_paused_master_is_its_own_target_down(sobs: SentinelObs) -> None:
    obs = sobs.obs
    now = masters(sobs.topology)
    host, port = now["ai"].rsplit(":", 1)
    stack = AsyncExitStack()
    page = await _open_dashboard(stack, obs.base)  # open before the pause: it polls by itself
    await _sentinels_down_after(PAUSE_MS * 4)  # the pause is no failover
    admin = Redis(host=host, port=int(port), socket_timeout=2)
    paused_at = time.monotonic()
    try:
        await admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        m = await eventually(
            obs.metrics, lambda m: ups(m).get("ai") == 0, timeout_s=PAUSE_MS / 1000
        )
        assert time.monotonic() - paused_at < PAUSE_MS / 1000  # seen while paused
        assert ups(m) == {"sessions": 1, "ai": 0, "voice": 1}
        # the others keep every figure; the paused one has none but its `up`
        assert answered(m) == {f: (now[f], "master", POLICIES[f]) for f in ("sessions", "voice")}
        assert value(m, "rpcache_redis_maxmemory_bytes", target="voice") == MAXMEMORY
        assert [n for n, labels in m if ("target", "ai") in labels] == ["rpcache_redis_up"]
        assert value(m, "rpcache_source_up", source="redis") == 0
        assert value(m, "rpcache_source_up", source="postgres") == 1

        d = await obs.dashboard()
        assert d["redis"]["down"] == ["ai"]
        assert d["sources"]["redis"] is False
        rows = {r["target"]: r for r in d["redis"]["targets"]}
        assert rows["ai"]["up"] is False and "Timeout" in rows["ai"]["error"]
        assert rows["sessions"]["up"] and rows["voice"]["node"] == now["voice"]

        if page is not None:  # the page: the Redis indicator names the target down
            await page.wait_for_function(
                "() => document.getElementById('src-redis-text').textContent === 'Redis: ai down'",
                timeout=PAUSE_MS,
            )
            assert await page.get_attribute("#src-redis", "data-up") == "false"
            down = page.locator('#redis-targets tr[data-target="ai"][data-up="false"] td')
            texts = await down.all_inner_texts()
            assert texts[0] == "ai" and texts[1].startswith("down · TimeoutError")
            for family in ("sessions", "voice"):
                cells = page.locator(f'#redis-targets tr[data-target="{family}"] td')
                assert (await cells.all_inner_texts())[:3] == [family, now[family], "master"]
            assert await page.locator("#redis-targets-up").inner_text() == "2 of 3 targets up"
            assert time.monotonic() - paused_at < PAUSE_MS / 1000  # all seen while paused
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        await stack.aclose()
        # the pause holds every command of `admin` too: wait it out, then restore
        remaining = PAUSE_MS / 1000 - (time.monotonic() - paused_at)
        await asyncio.sleep(max(0.0, remaining) + 0.5)
        await admin.aclose()
        await _sentinels_down_after(DOWN_AFTER_MS)
    m = await eventually(obs.metrics, lambda m: ups(m) == dict.fromkeys(KEY_FAMILIES, 1.0))
    assert answered(m)["ai"] == (now["ai"], "master", POLICIES["ai"])
    assert masters(sobs.topology) == now  # nothing failed over
