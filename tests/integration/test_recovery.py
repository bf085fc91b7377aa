"""Recovery: replay after FLUSHALL, the automatic rebuild after a real Redis restart, warm-up."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from schemas import H
from schemas.keys import (
    LOADED_MARKER_KEY,
    ai_response_key,
    scenario_context_key,
    session_key,
    voice_key,
)
from streams.read.replay import replay
from streams.read.warmup import warmup
from streams.tools.stack import start_service, stop_service
from tests.integration.conftest import (
    IsolatedRun,
    eventually,
    isolated_run,
    read_alerts,
    stored_count,
)

pytestmark = pytest.mark.integration

Snapshot = dict[str, tuple[str, Any, int]]


async def snapshot(redis: Redis) -> Snapshot:
    """Every key: (type, value, pttl ms). Sorted sets as member → score."""
    out: Snapshot = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        value: Any
        if kind == "hash":
            value = await redis.hgetall(key)  # type: ignore[misc]
        elif kind == "string":
            value = await redis.get(key)
        elif kind == "zset":
            value = dict(await redis.zrange(key, 0, -1, withscores=True))
        else:
            value = kind
        out[key] = (kind, value, await redis.pttl(key))
    return out


def assert_same(before: Snapshot, after: Snapshot, ttl_tolerance_ms: int = 3000) -> None:
    assert sorted(before) == sorted(after)
    for key, (kind, value, ttl) in before.items():
        kind2, value2, ttl2 = after[key]
        assert (kind2, value2) == (kind, value), key
        assert ttl2 > 0, f"{key} has no TTL"
        if key.startswith("metrics:"):
            assert ttl2 <= 300_000  # renewed on every write, replay included
        else:
            assert abs(ttl2 - ttl) < ttl_tolerance_ms, (key, ttl, ttl2)


async def traffic(run: IsolatedRun) -> dict[str, Any]:
    """One of everything, plus entries whose TTL has already run out."""
    pub, now = run.publisher, datetime.now(UTC)
    user = f"u-{uuid.uuid4().hex[:8]}"
    sid = await pub.session_started(user, speaker_id=3, scenario_id="cafe")
    idle = await pub.session_started(user, speaker_id=1, occurred_at=now - timedelta(minutes=40))
    ids = [
        await pub.user_login(user, preferences={"lang": "ja"}),
        await pub.session_activity(user, sid, performance_stats={"turn": 1}),
        await pub.ai_response(
            user, sid, prompt="fresh", response="r1", provider="g", model="m", latency_ms=900
        ),
        await pub.ai_response(
            user,
            sid,
            prompt="stale",
            response="r2",
            provider="g",
            model="m",
            latency_ms=900,
            occurred_at=now - timedelta(hours=2),
        ),
        await pub.voice_synthesized(
            user,
            sid,
            speaker_id=3,
            text="hello",
            audio_b64=base64.b64encode(b"RIFF" * 100).decode(),
            latency_ms=400,
        ),
        await pub.ai_failed(user, sid, provider="g", model="m", error="x", latency_ms=5),
    ]
    await eventually(lambda: stored_count(run.pool, ids), lambda n: n == len(ids))
    await eventually(lambda: run.redis.exists(voice_key(3, "hello")), lambda n: n == 1)
    await asyncio.sleep(1.0)  # the last batches' Redis pipelines
    return {"session": sid, "idle": idle, "user": user}


async def test_flushall_then_replay_restores_every_key_and_ttl(test_env: dict[str, str]) -> None:
    async with isolated_run(test_env, "replay", 13, AUTO_REBUILD="false") as run:
        made = await traffic(run)
        before = await snapshot(run.redis)
        assert session_key(made["session"]) in before
        assert session_key(made["idle"]) not in before  # idle for 40 min: expired
        assert ai_response_key("stale") not in before  # cached 2 h ago: expired
        assert ai_response_key("fresh") in before

        await run.redis.flushdb()
        summary = await replay(run.pool, run.redis, run.settings)
        after = await snapshot(run.redis)
        assert_same(before, after)
        assert summary.expired["ai"] == 1  # the idle session: the sweeper already closed it
        assert ai_response_key("stale") not in after and session_key(made["idle"]) not in after

        again = await replay(run.pool, run.redis, run.settings)  # idempotent
        assert_same(after, await snapshot(run.redis))
        assert again.written == summary.written

        # Keys of ours someone rewrote with another type: replay deletes and rewrites them.
        wrong = [session_key(made["session"]), ai_response_key("fresh")]
        wrong += [k for k in after if k.startswith(("stats:", "metrics:"))][:2]
        for key in wrong:
            await run.redis.delete(key)
            await run.redis.rpush(key, "not ours")  # a type no projection writes
        repaired = await replay(run.pool, run.redis, run.settings)
        assert_same(after, await snapshot(run.redis))
        assert repaired.written == summary.written


async def test_worker_rebuilds_redis_by_itself_after_a_restart(test_env: dict[str, str]) -> None:
    async with isolated_run(test_env, "rebuild", 12, REDIS_WATCH_INTERVAL_S="1") as run:
        await traffic(run)
        await eventually(lambda: run.redis.exists(LOADED_MARKER_KEY), lambda n: n == 1)
        before = await snapshot(run.redis)
        del before[LOADED_MARKER_KEY]

        run_id = (await run.redis.info("server"))["run_id"]
        stop_service("redis")  # really stopped; no persistence: it comes back empty
        start_service("redis")
        # A new server (its dataset starts empty; the rebuild may already be writing).
        assert (await run.redis.info("server"))["run_id"] != run_id

        async def rebuilt() -> Snapshot:
            snap = await snapshot(run.redis)
            return snap if LOADED_MARKER_KEY in snap else {}

        after = await eventually(rebuilt, bool, timeout_s=60)
        del after[LOADED_MARKER_KEY]
        assert_same(before, after, ttl_tolerance_ms=5000)

        alerts = await read_alerts(run.settings, "redis_rebuild", 2)
        # After the restart only: the first start, on a fresh database, marked Redis as
        # loaded instead of "rebuilding" what the worker had projected (rebuild.py).
        assert [a["state"] for a in alerts] == ["firing", "resolved"]
        assert alerts[-1]["value"] >= len(before) - 6  # keys written (metrics: one per window)


async def test_warmup_loads_exactly_the_top_n(test_env: dict[str, str]) -> None:
    async with isolated_run(test_env, "warmup", 11, AUTO_REBUILD="false") as run:
        pub = run.publisher
        user = f"u-{uuid.uuid4().hex[:8]}"
        ids: list[str] = []
        for rank, scenario in enumerate(("s-a", "s-a", "s-a", "s-b", "s-b", "s-c")):
            ids.append(
                await pub.session_started(
                    user,
                    speaker_id=rank,
                    scenario_id=scenario,
                    conversation_context={"scene": scenario, "n": rank},
                )
            )
        for i in range(5):  # prompt p{i}: one miss and i hits → use_count i + 1
            sid = ids[0]
            ids.append(
                await pub.ai_response(
                    user,
                    sid,
                    prompt=f"p{i}",
                    response=f"r{i}",
                    provider="g",
                    model="m",
                    latency_ms=1,
                )
            )
            ids.append(
                await pub.voice_synthesized(
                    user, sid, speaker_id=1, text=f"t{i}", audio_b64="UklGRg==", latency_ms=1
                )
            )
            for _ in range(i):
                ids.append(
                    await pub.ai_response(
                        user,
                        sid,
                        prompt=f"p{i}",
                        response=f"r{i}",
                        provider="g",
                        model="m",
                        latency_ms=1,
                        cache_hit=True,
                    )
                )
                ids.append(
                    await pub.voice_synthesized(
                        user,
                        sid,
                        speaker_id=1,
                        text=f"t{i}",
                        audio_b64="",
                        latency_ms=1,
                        cache_hit=True,
                    )
                )
        await eventually(lambda: stored_count(run.pool, ids[6:]), lambda n: n == len(ids) - 6)
        await asyncio.sleep(1.0)
        await run.redis.flushdb()

        loaded = await warmup(run.pool, run.redis, top=2)
        assert loaded == {"ai": 2, "voice": 2, "scenarios": 2}
        present = {k async for k in run.redis.scan_iter()}
        assert present == {
            ai_response_key("p4"),
            ai_response_key("p3"),
            voice_key(1, "t4"),
            voice_key(1, "t3"),
            scenario_context_key("s-a"),
            scenario_context_key("s-b"),
        }
        assert 3590 < await run.redis.ttl(ai_response_key("p4")) <= 3600
        assert 86390 < await run.redis.ttl(voice_key(1, "t3")) <= 86400
        scenario = orjson.loads(await run.redis.get(scenario_context_key("s-a")))
        assert scenario == {
            "scenario_id": "s-a",
            "conversation_context": {"scene": "s-a", "n": 2},
            "sessions": 3,
        }
        assert orjson.loads(await run.redis.get(ai_response_key("p4")))["prompt_hash"] == H("p4")
