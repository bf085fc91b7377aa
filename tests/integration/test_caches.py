"""Inference and synthesis end to end: caches, metrics, stats fields and alerts."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from schemas import H
from schemas.keys import ai_response_key, format_utc, metrics_key, stats_key, voice_key
from streams.publisher import EventPublisher
from streams.settings import Settings
from tests.integration.conftest import (
    WorkerProcess,
    alone_on_shared_keys,
    eventually,
    isolated_run,
    read_alerts,
    stored_count,
)
from tests.integration.topology import RedisKeys

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel", "cluster", "cluster-design")
"""`make test` runs this module on one Redis, `make test-sentinel` on the Sentinel topology,
`make test-cluster` on the local Redis Cluster in both key layouts."""


def ids() -> tuple[str, str]:
    return f"u-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())


def b64(n: int) -> str:
    """Base64 of exactly `n` bytes of fake audio."""
    return base64.b64encode((b"RIFF" + b"\x7f" * n)[:n]).decode()


async def test_ai_miss_caches_and_hit_counts(
    worker: WorkerProcess, publisher: EventPublisher, redis_keys: RedisKeys, pool: asyncpg.Pool
) -> None:
    user, sid = ids()
    prompt = f"こんにちは {uuid.uuid4()}"
    at = datetime.now(UTC).replace(microsecond=0)
    await publisher.ai_response(
        user,
        sid,
        prompt=prompt,
        response="やあ",
        provider="groq",
        model="llama-3.1-70b",
        latency_ms=1250,
        occurred_at=at,
    )
    raw = await eventually(lambda: redis_keys.get(ai_response_key(prompt)), bool)
    assert await redis_keys.type(ai_response_key(prompt)) == "string"
    assert orjson.loads(raw) == {
        "prompt_hash": H(prompt),
        "response": "やあ",
        "provider": "groq",
        "model": "llama-3.1-70b",
        "cached_at": format_utc(at),
    }
    ttl = await redis_keys.pttl(ai_response_key(prompt))
    assert abs(ttl / 1000 - ((at + timedelta(hours=1)) - datetime.now(UTC)).total_seconds()) < 5

    for _ in range(3):
        await publisher.ai_response(
            user,
            sid,
            prompt=prompt,
            response="やあ",
            provider="groq",
            model="llama-3.1-70b",
            latency_ms=40,
            cache_hit=True,
        )
    row = await eventually(
        lambda: pool.fetchrow(
            "SELECT use_count, hit_count, cached_at FROM ai_responses WHERE prompt_hash = $1",
            H(prompt),
        ),
        lambda r: r is not None and r["hit_count"] == 3,
    )
    assert (row["use_count"], row["cached_at"]) == (4, at)
    assert orjson.loads(await redis_keys.get(ai_response_key(prompt)))["cached_at"] == format_utc(
        at
    )


async def test_voice_miss_caches_audio_and_limit(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis_keys: RedisKeys,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    user, sid = ids()
    text = f"konnichiwa {uuid.uuid4()}"
    at = datetime.now(UTC).replace(microsecond=0)
    limit = settings.voice_max_audio_bytes
    audio = b64(limit)  # exactly at the limit: cached
    await publisher.voice_synthesized(
        user, sid, speaker_id=6, text=text, audio_b64=audio, latency_ms=640, occurred_at=at
    )
    got = await eventually(lambda: redis_keys.get(voice_key(6, text)), bool, timeout_s=60)
    assert got == audio
    ttl = await redis_keys.ttl(voice_key(6, text))
    assert abs(ttl - ((at + timedelta(hours=24)) - datetime.now(UTC)).total_seconds()) < 5
    stored = await pool.fetchval(
        "SELECT audio FROM voice_clips WHERE speaker_id = 6 AND text_hash = $1", H(text)
    )
    assert bytes(stored) == base64.b64decode(audio)

    too_big = str(uuid.uuid4())
    await publisher.voice_synthesized(
        user,
        sid,
        speaker_id=6,
        text=text + "!",
        audio_b64=b64(limit + 1),
        latency_ms=1,
        event_id=too_big,
    )
    row = await eventually(
        lambda: pool.fetchrow(
            "SELECT reason, detail FROM dead_letters WHERE event_id = $1", too_big
        ),
        lambda r: r is not None,
    )
    assert row["reason"] == "audio_too_large"
    assert await redis_keys.exists(voice_key(6, text + "!")) == 0


async def test_latency_metrics_members_windows_and_ttl(
    worker: WorkerProcess, publisher: EventPublisher, redis_keys: RedisKeys
) -> None:
    user, sid = ids()
    now = datetime.now(UTC)
    recent = await publisher.ai_response(
        user,
        sid,
        prompt="p",
        response="r",
        provider="g",
        model="m",
        latency_ms=87.5,
        occurred_at=now,
    )
    older = await publisher.ai_response(
        user,
        sid,
        prompt="p",
        response="r",
        provider="g",
        model="m",
        latency_ms=120,
        cache_hit=True,
        occurred_at=now - timedelta(minutes=3),
    )
    synth = await publisher.voice_synthesized(
        user, sid, speaker_id=1, text="t", audio_b64=b64(64), latency_ms=300, occurred_at=now
    )

    one_h = await eventually(
        lambda: redis_keys.zscores(metrics_key("response_time", "1h")),
        lambda m: f"120:{older}" in m and f"87.5:{recent}" in m,
    )
    assert one_h[f"87.5:{recent}"] == pytest.approx(now.timestamp(), abs=1e-3)
    five = await redis_keys.zscores(metrics_key("response_time", "5m"))
    one = await redis_keys.zscores(metrics_key("response_time", "1m"))
    assert f"120:{older}" in five and f"87.5:{recent}" in five
    assert f"120:{older}" not in one and f"87.5:{recent}" in one  # older than 1 min: trimmed
    assert all(
        s >= (datetime.now(UTC) - timedelta(minutes=1, seconds=5)).timestamp() for s in one.values()
    )
    synth_m = await eventually(
        lambda: redis_keys.zscores(metrics_key("synthesis_time", "1m")),
        lambda m: f"300:{synth}" in m,
    )
    assert synth_m
    for key in (metrics_key("response_time", "1m"), metrics_key("synthesis_time", "1h")):
        assert 0 < await redis_keys.ttl(key) <= 300


async def test_stats_duplicates_and_alerts_in_isolation(
    test_env: dict[str, str], worker: WorkerProcess, redis_keys: RedisKeys, settings: Settings
) -> None:
    """Every stats field from a known sequence; duplicates change nothing; one alert
    when the hit rate falls below 70 % and one recovery when it is back.

    On a cluster the run shares db 0 with the shared worker, which is stopped
    meanwhile: the day's stats hash and the metrics are not anybody's by id."""
    async with (
        alone_on_shared_keys(worker, redis_keys, settings),
        isolated_run(
            test_env,
            "stats",
            14,
            ALERT_MIN_SAMPLES="10",
            ALERT_INTERVAL_S="1",
            MAX_CONCURRENT_SESSIONS="10",
        ) as run,
    ):
        pub, keys = run.publisher, run.keys
        user, _ = ids()
        day = datetime.now(run.settings.tz).date()
        sid = await pub.session_started(user, speaker_id=1)
        await pub.session_started(user, speaker_id=2)

        # 10 AI misses (100 ms each) → hit rate 0 with 10 samples: the WARNING fires.
        events: list[str] = []
        for i in range(10):
            events.append(
                await pub.ai_response(
                    user, sid, prompt=f"q{i}", response="a", provider="g", model="m", latency_ms=100
                )
            )
        await eventually(lambda: stored_count(run.pool, events), lambda n: n == 10)
        alerts = await read_alerts(run.settings, "ai_cache_hit_rate_low", want=1)
        assert [a["state"] for a in alerts] == ["firing"]
        # The same ten again (redelivered/duplicated): nothing may move.
        for eid in events:
            row = await run.pool.fetchrow(
                "SELECT payload FROM events WHERE event_id = $1", uuid.UUID(eid)
            )
            await pub.publish_raw(
                f"{run.settings.topic_prefix}inference-events",
                user.encode(),
                row["payload"].encode(),
            )
        # 30 hits (10 ms), 1 ai.failed, 3 voice misses + 1 hit, 1 voice.failed.
        for i in range(30):
            events.append(
                await pub.ai_response(
                    user,
                    sid,
                    prompt=f"q{i % 10}",
                    response="a",
                    provider="g",
                    model="m",
                    latency_ms=10,
                    cache_hit=True,
                )
            )
        events.append(
            await pub.ai_failed(
                user, sid, provider="g", model="m", error="timeout", latency_ms=3000
            )
        )
        for i in range(4):
            events.append(
                await pub.voice_synthesized(
                    user,
                    sid,
                    speaker_id=3,
                    text=f"t{i % 3}",
                    audio_b64=b64(100),
                    latency_ms=50,
                    cache_hit=i == 3,
                )
            )
        events.append(
            await pub.voice_failed(user, sid, speaker_id=3, text="x", error="busy", latency_ms=9)
        )
        await eventually(lambda: stored_count(run.pool, events), lambda n: n == len(events))

        want = {
            "total_sessions_today": "2",
            "active_sessions": "2",
            "system_load": "0.2",  # 2 / MAX_CONCURRENT_SESSIONS
            "avg_response_time": "32.5",  # (10×100 + 30×10) / 40
            "ai_cache_hit_rate": "0.75",  # 30 / 40
            "voice_cache_hit_rate": "0.25",  # 1 / 4
            "error_rate": "0.0434783",  # 2 failed / (40 + 4 + 2)
        }
        got = await eventually(
            lambda: keys.hgetall(stats_key(day)),
            lambda s: s == want,
        )
        assert got == want
        assert 86000 < await keys.ttl(stats_key(day)) <= 86400
        shown = await keys.zcard(metrics_key("response_time", "1h"))
        assert shown == 40  # duplicates added no member

        alerts = await read_alerts(run.settings, "ai_cache_hit_rate_low", want=2)
        assert [a["state"] for a in alerts] == ["firing", "resolved"]
        assert alerts[0]["level"] == "WARNING" and alerts[0]["value"] < 0.7
        assert alerts[1]["value"] >= 0.7 and alerts[0]["threshold"] == 0.7
        assert {"rule", "level", "metric", "value", "threshold", "time"} <= alerts[0].keys()
