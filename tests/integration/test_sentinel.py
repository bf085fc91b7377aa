"""The worker on the design's master/replica topology: a target per family, Sentinel failover.

`streams/tools/stack/sentinel.py` runs a master and a replica per key family
and three Sentinels. The worker writes each family's keys to that family's
master only (SPEC §8); replicas follow; when the voice master is killed with
SIGKILL, Sentinel promotes its replica and the worker's voice writes resume
by themselves, while session and AI writes never stop.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schemas.keys import LOADED_MARKER_KEY, ai_response_key, session_key, voice_key
from streams.redis_targets import (
    KEY_FAMILIES,
    KeyFamily,
    close_client,
    master_client,
    parse_target,
)
from streams.settings import Settings, get_settings
from streams.tools.stack.sentinel import SentinelTopology, family_url, sentinel_env
from tests.integration.conftest import eventually, isolated_run

pytestmark = pytest.mark.integration
DB = 3
AUDIO = base64.b64encode(b"RIFF" + b"\0" * 64).decode()


@pytest.fixture(scope="module")
def topology() -> Iterator[SentinelTopology]:
    topo = SentinelTopology(get_settings())
    topo.up()
    yield topo
    for node in [n for n in _all_nodes() if topo.pid(n) is None]:
        topo.restart(node)  # a killed node comes back (as a replica) for the next test
    topo.wait_healthy(60)


def _all_nodes() -> list:  # type: ignore[type-arg]
    from streams.tools.stack.sentinel import data_nodes, sentinel_nodes

    return [*data_nodes(), *sentinel_nodes()]


async def _exists(client: Redis, *keys: str) -> int:
    """EXISTS on a family's current master; 0 while the failover leaves it without one
    (the Sentinels may still name the dead master for a second)."""
    try:
        return int(await client.exists(*keys))
    except (RedisConnectionError, RedisTimeoutError):
        return 0


def _masters(settings: Settings) -> dict[KeyFamily, Redis]:
    return {
        f: master_client(parse_target(family_url(f, DB)), settings, decode_responses=True)
        for f in KEY_FAMILIES
    }


async def test_each_family_on_its_own_master_and_a_failover_is_followed(
    test_env: dict[str, str], topology: SentinelTopology
) -> None:
    settings = get_settings()
    masters = _masters(settings)
    for client in masters.values():
        await client.flushdb()
    env = {**sentinel_env(DB), "RETRY_MAX_BACKOFF_S": "0.5"}
    async with isolated_run(test_env, "sentinel", 2, **env) as run:
        pub = run.publisher
        sid = await pub.session_started("sent-user", speaker_id=7)
        await pub.ai_response(
            "sent-user", sid, prompt="p-0", response="r", provider="g", model="m", latency_ms=9
        )
        await pub.voice_synthesized(
            "sent-user", sid, speaker_id=7, text="t-0", audio_b64=AUDIO, latency_ms=9
        )
        await eventually(lambda: masters["voice"].exists(voice_key(7, "t-0")), lambda n: n == 1)
        assert await masters["sessions"].exists(session_key(sid)) == 1
        assert await masters["ai"].exists(ai_response_key("p-0")) == 1
        # Each key on its own family's master only.
        assert await masters["sessions"].exists(voice_key(7, "t-0"), ai_response_key("p-0")) == 0
        assert await masters["voice"].exists(session_key(sid), ai_response_key("p-0")) == 0
        assert await run.redis.exists(session_key(sid)) == 0  # REDIS_URL holds none of them

        # Kill the voice master while all three families keep publishing.
        voice_master = topology.master_address("voice")
        assert voice_master is not None
        stop = asyncio.Event()
        sent: list[tuple[str, float]] = []

        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                await pub.session_activity("sent-user", sid, performance_stats={"i": i})
                await pub.ai_response(
                    "sent-user", sid, prompt=f"p-{i}", response="r", provider="g", model="m",
                    latency_ms=9,
                )  # fmt: skip
                await pub.voice_synthesized(
                    "sent-user", sid, speaker_id=7, text=f"t-{i}", audio_b64=AUDIO, latency_ms=9
                )
                sent.append((f"t-{i}", time.monotonic()))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(traffic())
        await asyncio.sleep(1)
        topology.kill(topology.node_at(voice_master[1]))
        # Session and AI writes go on while the voice family has no master.
        at_kill = len(sent)
        await eventually(
            lambda: _exists(masters["ai"], ai_response_key(f"p-{at_kill + 5}")), lambda n: n == 1
        )
        # The first clip sent after the kill: how long until it is on the new master.
        first_text, first_sent = sent[at_kill]
        await eventually(
            lambda: _exists(masters["voice"], voice_key(7, first_text)), lambda n: n == 1,
            timeout_s=30, interval_s=0.05,
        )  # fmt: skip
        gap = time.monotonic() - first_sent
        new_master = topology.master_address("voice")
        assert new_master is not None and new_master != voice_master
        await asyncio.sleep(1)
        stop.set()
        await task
        # Every voice clip sent, before, during and after the failover, is on the new master.
        wanted = [voice_key(7, t) for t, _ in sent]
        await eventually(
            lambda: _exists(masters["voice"], *wanted), lambda n: n == len(wanted), timeout_s=60
        )
        print(f"voice failover {voice_master} -> {new_master}: write gap {gap:.1f} s")
        dead = await run.pool.fetchval("SELECT count(*) FROM dead_letters")
        assert dead == 0
        assert run.worker.proc is not None and run.worker.proc.poll() is None
    for client in masters.values():
        await close_client(client)


async def test_a_family_that_lost_its_data_is_rebuilt_alone(
    test_env: dict[str, str], topology: SentinelTopology
) -> None:
    """The AI master and, through replication, its replica emptied (as a master without
    persistence restarted before Sentinel noticed): only the AI family is rebuilt,
    by the worker itself; the session and voice targets keep their keys untouched."""
    settings = get_settings()
    masters = _masters(settings)
    for client in masters.values():
        await client.flushdb()
    env = {**sentinel_env(DB), "REDIS_WATCH_INTERVAL_S": "1", "REBUILD_RATE": "100000"}
    async with isolated_run(test_env, "sentinelrebuild", 2, **env) as run:
        pub = run.publisher
        sid = await pub.session_started("rb-user", speaker_id=5)
        prompts = [f"rb-p-{i}" for i in range(20)]
        for prompt in prompts:
            await pub.ai_response(
                "rb-user", sid, prompt=prompt, response="r", provider="g", model="m", latency_ms=5
            )
        await pub.voice_synthesized(
            "rb-user", sid, speaker_id=5, text="rb-t", audio_b64=AUDIO, latency_ms=5
        )
        ai_keys = [ai_response_key(p) for p in prompts]
        await eventually(lambda: _exists(masters["ai"], *ai_keys), lambda n: n == len(ai_keys))
        await eventually(lambda: _exists(masters["voice"], voice_key(5, "rb-t")), lambda n: n == 1)
        for client in masters.values():  # every target carries its own marker
            await eventually(lambda c=client: _exists(c, LOADED_MARKER_KEY), lambda n: n == 1)  # type: ignore[misc]
        # Something no rebuild writes, to show the other targets are left alone.
        await masters["voice"].set("untouched", "1")
        await masters["sessions"].set("untouched", "1")
        log_before = len(run.worker.log_text())

        await masters["ai"].flushdb()  # the replica follows: both empty

        await eventually(
            lambda: _exists(masters["ai"], LOADED_MARKER_KEY, *ai_keys),
            lambda n: n == len(ai_keys) + 1,
            timeout_s=60,
        )
        log = run.worker.log_text()[log_before:]
        assert "Redis target of ai lost rpcache's data" in log, log[-2000:]
        assert "target of sessions" not in log and "target of voice" not in log
        assert await masters["voice"].get("untouched") == "1"
        assert await masters["sessions"].get("untouched") == "1"
        assert await masters["sessions"].exists(session_key(sid)) == 1
    for client in masters.values():
        await close_client(client)
