"""Pure parts of the observability: percentiles, meters, collectors, lag, the check's verdict,
and the Prometheus files (rules equal to the alert engine's thresholds)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.health import ConnectionHealth
from streams.model import CacheDay, DayFigures
from streams.observe.alerts import rules
from streams.observe.check import judge_heartbeat
from streams.observe.heartbeat import Heartbeat
from streams.observe.metrics import (
    AlertFigure,
    HealthCollector,
    LatencySummary,
    PipelineMetrics,
    RedisFigures,
    Snapshot,
    SnapshotCollector,
    TargetFigures,
    ThroughputMeter,
    latency_summary,
    percentile,
    register_reader,
)
from streams.observe.monitor import consumer_lag
from streams.read.reader import CacheReader
from streams.settings import Settings
from streams.store.memory import MemoryStore
from streams.write.pipeline import BatchOutcome, BatchPipeline, RawMessage
from tests import needs

ROOT = Path(__file__).resolve().parents[2]


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, frozenset(labels.items())))


# --- percentiles ---------------------------------------------------------------------
def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    ten = [10, 20, 30, 40, 50, 60, 100, 200, 300, 400]
    assert (percentile(ten, 0.5), percentile(ten, 0.95), percentile(ten, 0.99)) == (50, 400, 400)
    assert percentile([7.5], 0.99) == 7.5
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_latency_summary_parses_members_and_skips_garbage() -> None:
    members: list[str | bytes] = [
        b"300:3f1c",
        "10:a",
        "20.5:b",
        "junk",
        "x:c",
        "nan:d",
        b"100:e",
    ]
    summary = latency_summary(members)
    assert summary == LatencySummary(count=4, p50=20.5, p95=300, p99=300)
    empty = latency_summary([])
    assert empty.count == 0 and math.isnan(empty.p50)


# --- throughput ------------------------------------------------------------------------
def test_throughput_meter_buckets_by_second() -> None:
    now = [1000.2]
    meter = ThroughputMeter(keep_s=60, clock=lambda: now[0])
    meter.record(5)
    meter.record(5)
    now[0] = 1001.5
    meter.record(20)
    now[0] = 1003.0
    assert meter.series(4) == [0, 10, 20, 0]
    assert meter.rate(4) == 7.5
    now[0] = 2000.0  # everything aged out
    assert meter.rate(10) == 0.0
    assert meter.series(3) == [0, 0, 0]


# --- pipeline metrics ----------------------------------------------------------------
def test_pipeline_metrics_count_a_batch() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    assert value(registry, "rpcache_events_consumed_total", agent="synthesis") == 0
    metrics.observe(
        BatchOutcome(
            messages=5,
            accepted=4,
            new=3,
            duplicates=1,
            dead_letters=1,
            misrouted=2,
            retries=2,
            reasons=["invalid_json"],
            topic="session-events",
            seconds=0.02,
            freshness_s=[0.05, 0.2, 3.0],
        )
    )
    metrics.observe(BatchOutcome(messages=1, accepted=1, new=1, topic="session-events"))
    v = lambda name, **kw: value(registry, name, agent="sessions", **kw)  # noqa: E731
    assert v("rpcache_events_consumed_total") == 6
    assert v("rpcache_events_projected_total") == 5
    assert v("rpcache_events_new_total") == 4
    assert v("rpcache_events_duplicate_total") == 1
    assert v("rpcache_events_misrouted_total") == 2
    assert v("rpcache_batch_retries_total") == 2
    assert v("rpcache_events_dead_lettered_total", reason="invalid_json") == 1
    assert v("rpcache_batch_size_count") == 2
    assert v("rpcache_batch_size_sum") == 6
    assert v("rpcache_batch_seconds_sum") == pytest.approx(0.02)
    assert v("rpcache_event_freshness_seconds_count") == 3
    assert v("rpcache_event_freshness_seconds_bucket", le="0.25") == 2
    assert metrics.totals["sessions"] == {
        "consumed": 6,
        "projected": 5,
        "dead_lettered": 1,
        "batches": 2,
    }


# --- figures read at scrape time --------------------------------------------------------
def test_snapshot_collector_exports_every_figure() -> None:
    registry = CollectorRegistry()
    collector = SnapshotCollector()
    registry.register(collector)
    assert samples(registry) == {}  # nothing before the first refresh
    collector.snapshot = Snapshot(
        taken_at=datetime(2025, 1, 30, 10, 30, tzinfo=UTC),
        day=DayFigures(
            day=date(2025, 1, 30),
            sessions_started=2,
            ai=CacheDay(hits=6, misses=4, lookups=10, hit_rate=0.6),
            voice=CacheDay(hits=0, misses=0, lookups=0, hit_rate=0.0),
            avg_response_ms=121.0,
            error_rate=1 / 13,
            active_sessions=1,
            system_load=1 / 30,
        ),
        latency={
            ("response_time", "1h"): LatencySummary(10, 50, 400, 400),
            ("synthesis_time", "1h"): latency_summary([]),
        },
        lag={("roleplay.session-events", 0): 0, ("roleplay.session-events", 1): 7},
        redis=[
            TargetFigures(
                "sessions+ai+voice",
                RedisFigures(used_memory=2048, maxmemory=0, connected_clients=3, evicted_keys=9),
            )
        ],
        alerts=[
            AlertFigure("ai_cache_hit_rate_low", "WARNING", True, None),
            AlertFigure("redis_memory_high", "CRITICAL", False, None),
        ],
        sources_up={"postgres": True, "redis": True, "kafka": False},
    )
    got = samples(registry)

    def g(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert g("rpcache_cache_hit_rate", cache="ai") == 0.6
    assert g("rpcache_cache_hit_rate", cache="voice") == 0.0
    assert g("rpcache_cache_lookups_today", cache="ai") == 10
    assert g("rpcache_cache_hits_today", cache="ai") == 6
    assert g("rpcache_avg_response_time_ms") == 121.0
    assert g("rpcache_error_rate") == pytest.approx(1 / 13)
    assert g("rpcache_active_sessions") == 1
    assert g("rpcache_sessions_started_today") == 2
    assert g("rpcache_latency_ms", metric="response_time", window="1h", quantile="0.95") == 400
    assert g("rpcache_latency_samples", metric="synthesis_time", window="1h") == 0
    assert not any(
        name == "rpcache_latency_ms" and ("metric", "synthesis_time") in labels
        for name, labels in got
    )  # no percentile of nothing
    assert g("rpcache_consumer_lag", topic="roleplay.session-events", partition="1") == 7
    one = "sessions+ai+voice"  # every family on one Redis: one target
    assert g("rpcache_redis_up", target=one) == 1
    assert g("rpcache_redis_used_memory_bytes", target=one) == 2048
    assert g("rpcache_redis_maxmemory_bytes", target=one) == 0
    assert g("rpcache_redis_connected_clients", target=one) == 3
    assert g("rpcache_redis_evicted_keys_total", target=one) == 9
    assert g("rpcache_alert_firing", rule="ai_cache_hit_rate_low", level="WARNING") == 1
    assert g("rpcache_alert_firing", rule="redis_memory_high", level="CRITICAL") == 0
    assert g("rpcache_alerts_firing") == 1
    assert g("rpcache_source_up", source="kafka") == 0


def test_health_collector_counts_attempts_per_dependency() -> None:
    health = ConnectionHealth()
    for ok in (True, True, False):
        health.record("redis", ok)
    health.record("postgres", True)
    registry = CollectorRegistry()
    registry.register(HealthCollector(health))
    assert value(registry, "rpcache_connection_attempts_total", dependency="redis") == 3
    assert value(registry, "rpcache_connection_failures_total", dependency="redis") == 1
    assert value(registry, "rpcache_connection_failures_total", dependency="postgres") == 0
    assert value(registry, "rpcache_connection_failure_ratio") == 0.25


def test_register_reader_exports_the_real_readers_stats() -> None:
    reader = CacheReader.from_settings(Settings())  # no connection until the first read
    registry = CollectorRegistry()
    register_reader(reader, registry)
    assert value(registry, "rpcache_reader_reads_total") == 0
    assert value(registry, "rpcache_reader_fallbacks_total") == 0
    assert value(registry, "rpcache_reader_postgres_reads_total") == 0
    assert value(registry, "rpcache_reader_fallback_ratio") == 0
    assert value(registry, "rpcache_reader_breaker_state", state="closed") == 1
    assert value(registry, "rpcache_reader_breaker_state", state="open") == 0
    assert value(registry, "rpcache_reader_queued_total") == 0
    assert value(registry, "rpcache_reader_replica_hits_total") == 0
    # One breaker per target: with REDIS_URL alone, one target serving every family.
    assert (
        value(
            registry,
            "rpcache_reader_target_breaker_state",
            breaker="sessions+ai+voice",
            state="closed",
        )
        == 1
    )


# --- lag and the check's verdict -------------------------------------------------------
def test_consumer_lag_counts_what_postgres_does_not_hold_yet() -> None:
    a, b, c, d = ("t", 0), ("t", 1), ("t", 2), ("t", 3)
    ends = {a: 10, b: 10, c: 5, d: 100}
    begins = {a: 0, b: 0, c: 0, d: 50}
    positions = {a: 9, b: 4, d: 10}  # c never processed; d's stored offset was deleted
    assert consumer_lag(ends, begins, positions) == {a: 0, b: 5, c: 5, d: 50}


def beat(age_s: float, stopped: bool = False, starting: bool = False) -> Heartbeat:
    at = datetime(2025, 1, 30, 10, 30, tzinfo=UTC)
    return Heartbeat("w1", "host", 42, 6066, at, at, at if stopped else None, age_s, starting)


def test_judge_heartbeat() -> None:
    assert judge_heartbeat(beat(3.0), "rpcache", "w1", 30).ok
    stale = judge_heartbeat(beat(31.0), "rpcache", "w1", 30)
    assert not stale.ok and "stale" in stale.detail and "31.0 s ago" in stale.detail
    stopped = judge_heartbeat(beat(1.0, stopped=True), "rpcache", "w1", 30)
    assert not stopped.ok and "stopped" in stopped.detail
    missing = judge_heartbeat(None, "rpcache", "w1", 30)
    assert not missing.ok and "no heartbeat" in missing.detail
    assert missing.line().startswith("FAIL  heartbeat")
    running = judge_heartbeat(beat(3.0), "rpcache", "w1", 30)
    assert "starting" not in running.detail and "beat 3.0 s ago (pid 42" in running.detail
    starting = judge_heartbeat(beat(0.5, starting=True), "rpcache", "w1", 30)
    assert starting.ok and "is starting, not consuming yet" in starting.detail
    assert "pid 42" in starting.detail
    stuck = judge_heartbeat(beat(31.0, starting=True), "rpcache", "w1", 30)
    assert not stuck.ok and "stale" in stuck.detail and "still starting" in stuck.detail
    # a stopped row says stopped, whatever it said before
    assert "stopped" in judge_heartbeat(beat(1.0, True, True), "rpcache", "w1", 30).detail


# --- the Prometheus files and the dashboard page ---------------------------------------
def prometheus_rules() -> list[dict[str, object]]:
    doc = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_prometheus_rules_equal_the_alert_engines_thresholds() -> None:
    by_engine_rule = {
        r["labels"]["rpcache_rule"]: r  # type: ignore[index]
        for r in prometheus_rules()
        if "rpcache_rule" in r["labels"]  # type: ignore[operator]
    }
    settings = Settings()
    engine = rules(settings)
    assert set(by_engine_rule) == {r.name for r in engine}
    for rule in engine:
        prom = by_engine_rule[rule.name]
        expr = " ".join(str(prom["expr"]).split())
        assert re.search(rf"{re.escape(rule.op)} {rule.threshold:g}(\s|$)", expr), (rule, expr)
        severity = prom["labels"]["severity"]  # type: ignore[index]
        assert severity == rule.level.lower()
    # the sample floor of the rates is ALERT_MIN_SAMPLES
    for name in ("ai_cache_hit_rate_low", "voice_cache_hit_rate_low", "avg_response_time_high"):
        assert f">= {settings.alert_min_samples}" in str(by_engine_rule[name]["expr"])


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        needs.missing(
            "promtool not found: `make setup` installs it (Debian: apt-get install prometheus)"
        )
    folder = ROOT / "prometheus"
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = (folder / "prometheus.yml").read_text().replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(folder / "alerts.yml", tmp_path / "alerts.yml")
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_scrapes_the_worker_and_checks_its_health() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "rpcache", "check"]
    assert worker["environment"]["WORKER_WEB_BIND"] == "0.0.0.0"
    prometheus = compose["services"]["prometheus"]
    mounts = " ".join(prometheus["volumes"])
    assert "prometheus.yml" in mounts and "alerts.yml" in mounts
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["worker:6066"]


def test_dashboard_page_is_packaged_and_self_contained() -> None:
    html = (resources.files("streams.observe.web") / "dashboard.html").read_text("utf-8")
    assert 'fetch("/dashboard.json"' in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no CDN, no network


# --- the pipeline's report ------------------------------------------------------------
class _SplittingPipeline(BatchPipeline):
    """`_run` fails for any batch of more than one message, as a bug in one event would."""

    async def _run(self, messages: Sequence[RawMessage], outcome: BatchOutcome) -> None:
        if len(messages) > 1:
            raise RuntimeError("one of these is bad")
        outcome.accepted = outcome.new = 1
        outcome.freshness_s = [0.25]


async def _never_called(ops: Sequence[object]) -> None:
    raise AssertionError("_run is replaced: no Redis write")


async def test_a_split_batch_reports_once_with_topic_and_timing() -> None:
    reports: list[BatchOutcome] = []
    pipeline = _SplittingPipeline(
        handler=SimpleNamespace(topic_suffix="inference-events"),  # type: ignore[arg-type]
        topic_prefix="roleplay.",
        consumer_group="g",
        store=MemoryStore(),
        write_redis=_never_called,
        publish=None,  # type: ignore[arg-type]
        dead_letter_topic="roleplay.dead-letters",
        max_event_bytes=1024,
        max_audio_bytes=1024,
        max_backoff_s=0.1,
        on_batch=reports.append,
    )
    messages = [RawMessage("roleplay.inference-events", 0, i, None, b"{}") for i in range(3)]
    outcome = await pipeline.process(messages)
    assert reports == [outcome]
    assert (outcome.messages, outcome.accepted, outcome.new, outcome.split) == (3, 3, 3, True)
    assert outcome.freshness_s == [0.25, 0.25, 0.25]
    assert outcome.topic == "inference-events" and outcome.seconds > 0
    assert await pipeline.process([]) == BatchOutcome() and len(reports) == 1


def test_each_targets_breaker_is_exported() -> None:
    """A dead voice master opens the voice breaker only (SPEC §8: partial failure)."""
    from streams.read.reader import BreakerState, ReaderStats

    class Reader:
        stats = ReaderStats(
            breaker_state=BreakerState.OPEN,
            breakers={
                "sessions": BreakerState.CLOSED,
                "sessions/replica": BreakerState.HALF_OPEN,
                "voice": BreakerState.OPEN,
            },
        )

    registry = CollectorRegistry()
    register_reader(Reader(), registry)
    name = "rpcache_reader_target_breaker_state"
    assert value(registry, name, breaker="voice", state="open") == 1
    assert value(registry, name, breaker="voice", state="closed") == 0
    assert value(registry, name, breaker="sessions", state="closed") == 1
    assert value(registry, name, breaker="sessions/replica", state="half_open") == 1
    assert value(registry, "rpcache_reader_breaker_state", state="open") == 1
