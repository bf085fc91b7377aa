"""Observability end to end: /metrics after a known sequence, `rpcache check`, the dashboard.

One worker with its web server on, in a database, Redis db and topics of its
own, so every figure starts at zero and the expected values are computed by
hand from the sequence below:

    sessions   2 session.started, 1 session.ended, 1 message that is not JSON
    inference  6 ai.response hits (10..60 ms), 4 misses (100..400 ms), 1 ai.failed,
               and one hit published twice (the same event_id)
    synthesis  1 voice.synthesized hit (100 ms), 1 miss (500 ms)

AI hit rate 6/10 = 60 % (< 70 % with ALERT_MIN_SAMPLES=10: the WARNING fires),
voice 1/2 = 50 %, average response (210 + 1000) / 10 = 121 ms, error rate
1 / (10 + 2 + 1), response-time percentiles 50 / 400 / 400 ms (nearest rank),
synthesis 100 / 500 / 500 ms, 1 active session of 2 started today.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    LOG_DIR,
    RUN,
    IsolatedRun,
    eventually,
    isolated_run,
    rpcache_check,
)

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = LOG_DIR / f"{RUN}-dashboard.png"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ONE_REDIS = "sessions+ai+voice"
"""The one Redis target's label when REDIS_URL serves every family (SPEC §8)."""


def redis_node(url: str) -> str:
    """`host:port` of a redis:// URL, as the worker's connection names it."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Obs:
    run: IsolatedRun
    base: str
    http: aiohttp.ClientSession

    async def metrics(self) -> Samples:
        async with self.http.get(f"{self.base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def dashboard(self) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/dashboard.json") as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def publish_sequence(run: IsolatedRun) -> None:
    pub = run.publisher
    user = f"u-{uuid.uuid4().hex[:8]}"
    sid = await pub.session_started(user, speaker_id=1)
    second = await pub.session_started(user, speaker_id=2)
    await pub.session_ended(user, second, reason="done")
    await pub.publish_raw(f"{run.settings.topic_prefix}session-events", user.encode(), b"{nope")
    at = datetime.now(UTC)
    hit_ids = []
    for i, ms in enumerate((10, 20, 30, 40, 50, 60)):
        hit_ids.append(
            await pub.ai_response(
                user, sid, prompt=f"p{i}", response="r", provider="g", model="m",
                latency_ms=ms, cache_hit=True, occurred_at=at,
            )
        )  # fmt: skip
    for i, ms in enumerate((100, 200, 300, 400)):
        await pub.ai_response(
            user, sid, prompt=f"q{i}", response="r", provider="g", model="m", latency_ms=ms
        )
    await pub.ai_failed(user, sid, provider="g", model="m", error="timeout", latency_ms=1000)
    # the first hit again, same id and content: a redelivery, not a conflict
    await pub.ai_response(
        user, sid, prompt="p0", response="r", provider="g", model="m", latency_ms=10,
        cache_hit=True, event_id=hit_ids[0], occurred_at=at,
    )  # fmt: skip
    await pub.voice_synthesized(
        user, sid, speaker_id=1, text="hello", audio_b64="UklGRg==", latency_ms=100,
        cache_hit=True,
    )  # fmt: skip
    await pub.voice_synthesized(
        user, sid, speaker_id=1, text="world", audio_b64="UklGRg==", latency_ms=500
    )


def settled(samples: Samples) -> bool:
    consumed = {
        agent: value(samples, "rpcache_events_consumed_total", agent=agent)
        for agent in ("sessions", "inference", "synthesis")
    }
    return consumed == {"sessions": 4, "inference": 12, "synthesis": 2} and (
        value(samples, "rpcache_alerts_firing") == 1
    )


@pytest.fixture(scope="module")
async def obs(test_env: dict[str, str]) -> AsyncIterator[Obs]:
    port = free_port()
    async with (
        isolated_run(
            test_env,
            "obs",
            4,
            WORKER_WEB_ENABLED="true",
            WORKER_WEB_PORT=str(port),
            HEARTBEAT_INTERVAL_S="1",
            ALERT_MIN_SAMPLES="10",
            ALERT_INTERVAL_S="1",
        ) as run,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        o = Obs(run, f"http://127.0.0.1:{port}", http)
        await publish_sequence(run)
        await eventually(o.metrics, settled, timeout_s=60, interval_s=0.5)
        yield o


# --- /metrics -----------------------------------------------------------------------------
async def test_metrics_after_a_known_sequence(obs: Obs) -> None:
    m = await obs.metrics()

    def per_agent(name: str, agent: str, **labels: str) -> float | None:
        return value(m, name, agent=agent, **labels)

    # events consumed / projected / dead-lettered per agent
    agents = ("sessions", "inference", "synthesis")
    assert [per_agent("rpcache_events_projected_total", a) for a in agents] == [3, 12, 2]
    assert [per_agent("rpcache_events_new_total", a) for a in agents] == [3, 11, 2]
    assert per_agent("rpcache_events_duplicate_total", "inference") == 1
    assert per_agent("rpcache_events_dead_lettered_total", "sessions", reason="invalid_json") == 1
    dead = [k for k in m if k[0] == "rpcache_events_dead_lettered_total"]
    assert len(dead) == 1
    # batch size and time histograms: every consumed message is in exactly one batch
    for agent, consumed in (("sessions", 4), ("inference", 12), ("synthesis", 2)):
        assert per_agent("rpcache_batch_size_sum", agent) == consumed
        batches = per_agent("rpcache_batch_size_count", agent)
        assert batches is not None and 1 <= batches <= consumed
        assert per_agent("rpcache_batch_seconds_count", agent) == batches
        assert per_agent("rpcache_batch_seconds_bucket", agent, le="+Inf") == batches
    # freshness: one observation per new event, each well under the test's duration
    for agent, new in (("sessions", 3), ("inference", 11), ("synthesis", 2)):
        assert per_agent("rpcache_event_freshness_seconds_count", agent) == new
        assert per_agent("rpcache_event_freshness_seconds_bucket", agent, le="60.0") == new
    # today's figures, from PostgreSQL
    assert value(m, "rpcache_cache_hit_rate", cache="ai") == 0.6
    assert value(m, "rpcache_cache_hit_rate", cache="voice") == 0.5
    assert value(m, "rpcache_cache_lookups_today", cache="ai") == 10
    assert value(m, "rpcache_avg_response_time_ms") == 121.0
    assert value(m, "rpcache_error_rate") == pytest.approx(1 / 13)
    assert value(m, "rpcache_active_sessions") == 1
    assert value(m, "rpcache_sessions_started_today") == 2
    # latency percentiles from the sorted sets
    percentiles = {
        (metric, q): value(m, "rpcache_latency_ms", metric=metric, window="1h", quantile=q)
        for metric in ("response_time", "synthesis_time")
        for q in ("0.5", "0.95", "0.99")
    }
    assert percentiles == {
        ("response_time", "0.5"): 50, ("response_time", "0.95"): 400,
        ("response_time", "0.99"): 400, ("synthesis_time", "0.5"): 100,
        ("synthesis_time", "0.95"): 500, ("synthesis_time", "0.99"): 500,
    }  # fmt: skip
    assert value(m, "rpcache_latency_samples", metric="response_time", window="1h") == 10
    # consumer lag: every partition of the three source topics, all caught up
    lag = {k: v for k, v in m.items() if k[0] == "rpcache_consumer_lag"}
    assert len(lag) == 3 * obs.run.settings.topic_partitions
    assert set(lag.values()) == {0}
    # Redis INFO: REDIS_URL serves every family, so one target named after all three
    info = await obs.run.redis.info()
    one = ONE_REDIS
    assert [k for k in m if k[0] == "rpcache_redis_up"] == [
        ("rpcache_redis_up", frozenset({("target", one)}))
    ]
    assert value(m, "rpcache_redis_up", target=one) == 1
    assert value(m, "rpcache_redis_maxmemory_bytes", target=one) == info["maxmemory"]
    assert (value(m, "rpcache_redis_used_memory_bytes", target=one) or 0) > 0
    assert (value(m, "rpcache_redis_connected_clients", target=one) or 0) >= 1
    assert value(m, "rpcache_redis_evicted_keys_total", target=one) == info["evicted_keys"]
    assert (value(m, "rpcache_redis_keys", target=one) or 0) > 0  # sessions, caches, stats
    node = redis_node(obs.run.settings.redis_url.get_secret_value())
    policy = info["maxmemory_policy"]
    answered = {"target": one, "node": node, "role": "master", "maxmemory_policy": policy}
    assert value(m, "rpcache_redis_info", **answered) == 1
    # connection attempts of the pipelines; none failed
    assert (value(m, "rpcache_connection_attempts_total", dependency="postgres") or 0) >= 3
    assert (value(m, "rpcache_connection_attempts_total", dependency="redis") or 0) >= 3
    assert value(m, "rpcache_connection_failures_total", dependency="postgres") == 0
    assert value(m, "rpcache_connection_failure_ratio") == 0
    # alerts: the AI hit-rate WARNING fires, nothing else
    assert value(m, "rpcache_alert_firing", rule="ai_cache_hit_rate_low", level="WARNING") == 1
    assert value(m, "rpcache_alert_firing", rule="redis_memory_high", level="CRITICAL") == 0
    assert value(m, "rpcache_alerts_firing") == 1
    assert {value(m, "rpcache_source_up", source=s) for s in ("postgres", "redis", "kafka")} == {1}
    # the worker process itself (prometheus_client's default collectors)
    assert (value(m, "process_resident_memory_bytes") or 0) > 0


async def test_dashboard_json_reports_the_same_figures(obs: Obs) -> None:
    d = await obs.dashboard()
    today = d["today"]
    assert (today["ai"]["hits"], today["ai"]["misses"], today["ai"]["hit_rate"]) == (6, 4, 0.6)
    assert today["voice"]["hit_rate"] == 0.5
    assert today["avg_response_ms"] == 121.0
    assert (today["active_sessions"], today["sessions_today"]) == (1, 2)
    assert d["latency"]["response_time"]["1h"] == {"count": 10, "p50": 50, "p95": 400, "p99": 400}
    assert d["latency"]["synthesis_time"]["5m"] == {"count": 2, "p50": 100, "p95": 500, "p99": 500}
    assert d["lag"]["total"] == 0
    assert d["throughput"]["agents"]["inference"]["consumed"] == 12
    assert [a["rule"] for a in d["alerts"]["firing"]] == ["ai_cache_hit_rate_low"]
    history = {(h["rule"], h["state"]) for h in d["alerts"]["history"]}
    assert ("ai_cache_hit_rate_low", "firing") in history
    rows = await obs.run.pool.fetch("SELECT rule, state FROM alert_log")
    assert history == {(r["rule"], r["state"]) for r in rows}
    assert [w["worker_id"] for w in d["workers"]] == [obs.run.settings.worker_id]
    # Redis: one row, the one target every family shares
    redis = d["redis"]
    info = await obs.run.redis.info()
    (row,) = redis["targets"]
    assert {k: row[k] for k in ("target", "up", "node", "role", "maxmemory", "policy")} == {
        "target": ONE_REDIS,
        "up": True,
        "node": redis_node(obs.run.settings.redis_url.get_secret_value()),
        "role": "master",
        "maxmemory": info["maxmemory"],
        "policy": info["maxmemory_policy"],
    }
    assert row["used_memory"] > 0 and row["keys"] > 0 and row["connected_clients"] >= 1
    assert redis["down"] == []
    # the card's figure is the alerts': the fullest target, here the only one
    assert redis["memory_target"] == ONE_REDIS
    assert redis["memory_ratio"] == pytest.approx(row["used_memory"] / row["maxmemory"])


# --- the dashboard in Chromium -------------------------------------------------------------
def pct(x: float) -> str:
    return f"{x * 100:.1f} %"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
async def test_dashboard_in_headless_chromium(obs: Obs) -> None:
    from playwright.async_api import async_playwright

    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})

            def on_console(msg: Any) -> None:
                if msg.type in ("error", "warning"):
                    problems.append(f"console {msg.type}: {msg.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
            await page.goto(f"{obs.base}/dashboard", wait_until="load")
            await page.wait_for_selector('#status[data-state="live"]', timeout=15_000)
            # it updates by itself: a later poll renders again
            first = await page.get_attribute("body", "data-generated-at")
            await page.wait_for_function(
                "first => document.body.dataset.generatedAt !== first", arg=first, timeout=10_000
            )
            text = page.locator

            data = await obs.dashboard()
            today = data["today"]
            assert pct(today["ai"]["hit_rate"]) == "60.0 %"
            assert await text("#ai-hit-rate").inner_text() == "60.0 %"
            assert await text("#ai-hit-detail").inner_text() == "6 hits / 4 misses today"
            assert await text("#voice-hit-rate").inner_text() == "50.0 %"
            assert await text("#avg-response").inner_text() == "121 ms"
            assert await text("#active-sessions").inner_text() == "1"
            assert await text("#sessions-today").inner_text() == "2"
            assert await text("#error-rate").inner_text() == pct(1 / 13) == "7.7 %"
            assert await text("#kpi-ai").get_attribute("data-level") == "bad"  # below 70 %
            for metric, expected in (("response_time", ("10", "50 ms", "400 ms", "400 ms")),
                                     ("synthesis_time", ("2", "100 ms", "500 ms", "500 ms"))):  # fmt: skip
                cells = [
                    await text(f"#lat-{metric}-1h-{col}").inner_text()
                    for col in ("count", "p50", "p95", "p99")
                ]
                assert tuple(cells) == expected, metric
            assert await text("#lag-total").inner_text() == "0"
            assert await text("#lag-partitions tr").count() == 3 * obs.run.settings.topic_partitions
            assert await text('#alerts-firing [data-rule="ai_cache_hit_rate_low"]').count() == 1
            assert await text('#alert-history tr[data-rule="ai_cache_hit_rate_low"]').count() >= 1
            agents = {
                a: await text(f'#agents tr[data-agent="{a}"] td').all_inner_texts()
                for a in ("sessions", "inference", "synthesis")
            }
            assert agents == {
                "sessions": ["sessions", "4", "3", "1"],
                "inference": ["inference", "12", "12", "0"],
                "synthesis": ["synthesis", "2", "2", "0"],
            }
            assert await text("#worker-id").inner_text() == obs.run.settings.worker_id
            for source in ("postgres", "redis", "kafka"):
                assert await text(f"#src-{source}").get_attribute("data-up") == "true"
            assert await text("#src-redis-text").inner_text() == "Redis"
            redis_rows = text("#redis-targets tr")
            assert await redis_rows.count() == 1
            cells = await text(f'#redis-targets tr[data-target="{ONE_REDIS}"] td').all_inner_texts()
            node = redis_node(obs.run.settings.redis_url.get_secret_value())
            assert cells[:3] == [ONE_REDIS, node, "master"]
            assert cells[5] == data["redis"]["targets"][0]["policy"]
            assert await text("#redis-targets-up").inner_text() == "1 of 1 target up"
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            png = await page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            await browser.close()
    assert problems == []
    assert len(png) > 10_000


# --- rpcache check ---------------------------------------------------------------------------
async def test_check_with_broken_dependencies(obs: Obs) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = {
        **obs.run.env,
        "DATABASE_URL": f"postgresql://postgres@{dead}/rpcache",
        "KAFKA_BOOTSTRAP_SERVERS": dead,
        "REDIS_URL": f"redis://{dead}/0",
        "CHECK_TIMEOUT_S": "3",
    }
    code, out = await rpcache_check(env)
    assert code == 1, out
    for name in ("heartbeat", "postgres", "redis", "kafka"):
        assert f"FAIL  {name}" in out, out
    assert "unhealthy: heartbeat, postgres, redis, kafka" in out


async def test_check_follows_the_worker(obs: Obs) -> None:
    """Healthy; killed (stale heartbeat); restarted (healthy again); stopped cleanly."""
    env = obs.run.env
    code, out = await rpcache_check(env)
    assert code == 0, out
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["ok", "heartbeat"], ["ok", "postgres"], ["ok", "redis"], ["ok", "kafka"],
    ]  # fmt: skip

    obs.run.worker.kill()
    await asyncio.sleep(3)
    code, out = await rpcache_check(env, "--max-age", "2")
    assert code == 1, out
    assert "FAIL  heartbeat" in out and "stale" in out, out
    assert "ok    postgres" in out and "ok    kafka" in out

    obs.run.worker.start()
    await obs.run.worker.wait_ready()
    fresh = await eventually(lambda: rpcache_check(env, "--max-age", "2"), lambda r: r[0] == 0)
    assert "ok    heartbeat" in fresh[1]

    assert obs.run.worker.stop() == 0
    code, out = await rpcache_check(env)
    assert code == 1, out
    assert "FAIL  heartbeat" in out and "stopped at" in out, out
