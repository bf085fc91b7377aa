"""One function computes a day's figures (`projections.day_figures`): the stats hash,
`/metrics`, `/dashboard` and the alert rules show the same numbers for the same counters."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.model import (
    AI_FAILED,
    AI_HITS,
    AI_LATENCY_US,
    AI_MISSES,
    COUNTER_NAMES,
    SESSIONS_STARTED,
    VOICE_FAILED,
    VOICE_HITS,
    VOICE_MISSES,
    DayCounters,
    DayFigures,
)
from streams.observe.alerts import Reading, day_readings
from streams.observe.metrics import Snapshot, SnapshotCollector
from streams.observe.monitor import _day_json
from streams.projections import (
    HashWrite,
    day_figures,
    figures_of_days,
    project_stats,
    stats_fields,
)

DAY = date(2025, 1, 30)
T0 = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
COUNTERS = DayCounters(
    sessions_started=4,
    ai_hits=17,
    ai_misses=3,
    ai_failed=1,
    ai_latency_us=2_000_000,
    voice_hits=6,
    voice_misses=2,
    voice_failed=1,
)


def gauges(figures: DayFigures) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """What `/metrics` exports for these figures."""
    registry = CollectorRegistry()
    collector = SnapshotCollector()
    registry.register(collector)
    collector.snapshot = Snapshot(taken_at=T0, day=figures)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def views(figures: DayFigures) -> dict[str, list[object]]:
    """Each figure as the stats hash, /dashboard, /metrics and the alerts show it."""
    stats = stats_fields(figures)
    dashboard = _day_json(figures)
    assert dashboard is not None
    metrics = gauges(figures)
    alerts = day_readings(figures, min_samples=20)

    def m(name: str, **labels: str) -> float:
        return metrics[(name, frozenset(labels.items()))]

    return {
        "ai hit rate": [
            stats["ai_cache_hit_rate"],
            dashboard["ai"]["hit_rate"],
            m("rpcache_cache_hit_rate", cache="ai"),
            alerts["ai_cache_hit_rate"].value,
        ],
        "voice hit rate": [
            stats["voice_cache_hit_rate"],
            dashboard["voice"]["hit_rate"],
            m("rpcache_cache_hit_rate", cache="voice"),
            alerts["voice_cache_hit_rate"].value,
        ],
        "avg response ms": [
            stats["avg_response_time"],
            dashboard["avg_response_ms"],
            m("rpcache_avg_response_time_ms"),
            alerts["avg_response_time"].value,
        ],
        "error rate": [stats["error_rate"], dashboard["error_rate"], m("rpcache_error_rate")],
        "sessions today": [
            stats["total_sessions_today"],
            dashboard["sessions_today"],
            m("rpcache_sessions_started_today"),
        ],
        "active sessions": [
            stats["active_sessions"],
            dashboard["active_sessions"],
            m("rpcache_active_sessions"),
        ],
        "system load": [stats["system_load"], dashboard["system_load"], m("rpcache_system_load")],
        "ai lookups": [
            dashboard["ai"]["hits"] + dashboard["ai"]["misses"],
            m("rpcache_cache_lookups_today", cache="ai"),
        ],
    }


def test_hash_dashboard_metrics_and_alerts_show_the_same_figures() -> None:
    figures = day_figures(DAY, COUNTERS, active_sessions=3, capacity=30)
    want = {
        "ai hit rate": 0.85,  # 17 / 20
        "voice hit rate": 0.75,  # 6 / 8
        "avg response ms": 100.0,  # 2000 ms over 20 ai.response
        "error rate": 2 / 30,  # 2 failed over 20 + 8 + 2
        "sessions today": 4,
        "active sessions": 3,
        "system load": 0.1,
        "ai lookups": 20,
    }
    for figure, shown in views(figures).items():
        assert shown == [want[figure]] * len(shown), figure
    # the hash holds their text; the alerts judge a rate once it has enough lookups
    op = project_stats(DAY, stats_fields(figures), written_at=T0, now=T0)
    assert isinstance(op, HashWrite)
    assert op.fields["ai_cache_hit_rate"] == "0.85" and op.fields["error_rate"] == "0.0666667"
    readings = day_readings(figures, min_samples=20)
    assert readings["ai_cache_hit_rate"] == Reading(0.85, enough=True)  # 20 lookups
    assert readings["voice_cache_hit_rate"] == Reading(0.75, enough=False)  # 8 lookups


@given(
    st.builds(DayCounters, *[st.integers(0, 10**12)] * len(COUNTER_NAMES)),
    st.integers(0, 10_000),
    st.integers(1, 1_000),
)
def test_every_view_agrees_for_any_counters(
    counters: DayCounters, active: int, capacity: int
) -> None:
    for figure, shown in views(day_figures(DAY, counters, active, capacity)).items():
        assert len({float(v) for v in shown}) == 1, (figure, shown)


def test_other_days_have_no_gauge_of_now() -> None:
    """active_sessions and system_load are today's only: other days' hashes lack them."""
    yesterday = date(2025, 1, 29)
    figures = figures_of_days({DAY: COUNTERS, yesterday: COUNTERS}, DAY, 3, 30)
    assert stats_fields(figures[DAY]).keys() - stats_fields(figures[yesterday]).keys() == {
        "active_sessions",
        "system_load",
    }
    assert figures[yesterday].active_sessions is None and figures[yesterday].system_load is None


def test_day_counters_from_the_table_rows() -> None:
    """`daily_counters` names are the fields; a name the figures do not use is ignored."""
    assert COUNTER_NAMES == (
        SESSIONS_STARTED,
        AI_HITS,
        AI_MISSES,
        AI_FAILED,
        AI_LATENCY_US,
        VOICE_HITS,
        VOICE_MISSES,
        VOICE_FAILED,
    )
    assert DayCounters.of({AI_HITS: 2, "something_else": 9}) == DayCounters(ai_hits=2)
    assert DayCounters.of({}) == DayCounters()


def test_no_lookups_no_division() -> None:
    figures = day_figures(DAY, DayCounters(), active_sessions=0, capacity=30)
    assert (figures.ai.hit_rate, figures.voice.hit_rate) == (0.0, 0.0)
    assert (figures.avg_response_ms, figures.error_rate, figures.system_load) == (0.0, 0.0, 0.0)
    assert day_readings(figures, min_samples=1) == {
        "ai_cache_hit_rate": Reading(0.0, enough=False),
        "voice_cache_hit_rate": Reading(0.0, enough=False),
        "avg_response_time": Reading(0.0, enough=False),
    }


@pytest.mark.parametrize("active", [None, 5])
def test_stats_fields_only_rename(active: int | None) -> None:
    """The hash's fields are the figures, under SPEC §4's names: nothing recomputed."""
    f = day_figures(DAY, COUNTERS, active, 30)
    fields = stats_fields(f)
    assert fields["total_sessions_today"] == f.sessions_started
    assert fields["avg_response_time"] == f.avg_response_ms
    assert ("active_sessions" in fields) == (active is not None)
