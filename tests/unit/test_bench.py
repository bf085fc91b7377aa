"""The pure parts of `rpcache bench`: percentiles, the report and its targets, CPU time
per event, the baselines' Redis commands, the workload."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.events import Rejection, decode_event
from streams.tools.bench.cpu import CpuSample, cpu_delta, parse_proc_stat, window_start
from streams.tools.bench.env import parse_vm_hwm_mb, with_database, with_redis_db
from streams.tools.bench.freshness import Freshness
from streams.tools.bench.main import parse_phases
from streams.tools.bench.memory import MemoryFigure
from streams.tools.bench.reads import CLUSTER_READS, ReadLevel
from streams.tools.bench.report import (
    THROUGHPUT_COLUMNS,
    Results,
    build_report,
    check_targets,
    served_by,
    tables,
    throughput_rows,
)
from streams.tools.bench.stats import Latency, finite, per_event_us, percentile, rate, ratio
from streams.tools.bench.throughput import (
    Throughput,
    last_ready,
    naive_redis,
    redis_commands,
)
from streams.tools.bench.workload import (
    Workload,
    ai_misses,
    audio_pool,
    open_sessions,
    voice_misses,
)


# --- percentiles --------------------------------------------------------------------
def test_percentile_interpolates_like_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5  # numpy.percentile([1, 2, 3, 4], 50)
    assert percentile(values, 99) == pytest.approx(3.97)  # 3 + 0.97 * (4 - 3)
    assert percentile([5.0], 99) == 5.0


def test_percentile_ignores_input_order() -> None:
    values = [float(v) for v in range(1, 1001)]
    shuffled = values[:]
    random.Random(1).shuffle(shuffled)
    assert percentile(shuffled, 99) == percentile(values, 99) == pytest.approx(990.01)


def test_percentile_of_nothing_is_nan_and_bounds_are_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds() -> None:
    lat = Latency.of_seconds([0.001, 0.002, 0.003, 0.100])
    assert lat.n == 4
    assert lat.p50_ms == pytest.approx(2.5)
    assert lat.max_ms == pytest.approx(100.0)
    assert Latency.of_seconds([]).as_dict() == {
        "n": 0,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }


def test_rates_and_ratios_of_missing_figures_are_nan() -> None:
    assert rate(10, 2.0) == 5.0
    assert math.isnan(rate(10, 0.0))
    assert ratio(50.0, 10.0) == 5.0
    assert math.isnan(ratio(50.0, 0.0))
    assert math.isnan(ratio(math.nan, 10.0))
    assert finite(math.nan) is None
    assert finite(1.23456, 2) == 1.23


# --- the report -----------------------------------------------------------------------
def _level(source: str, users: int, p99_s: float) -> ReadLevel:
    level = ReadLevel(source, users, 10.0, sources=Counter({source: 300}))
    samples = [p99_s / 2] * 98 + [p99_s] * 2
    level.latency = {k: Latency.of_seconds(samples) for k in ("session", "ai", "voice")}
    return level


def _results(events_per_s: float = 6000.0) -> Results:
    seconds = 200_000 / events_per_s
    return Results(
        mode="quick",
        ours=Throughput(200_000, seconds, True, startup_s=2.0, peak_rss_mb=210.0),
        baseline=Throughput(6000, 10.0, False),
        ceiling=Throughput(200_000, 5.0, True),
        freshness=[
            Freshness(500, 5000, Latency.of_seconds([0.05] * 100), 0),
            Freshness(2000, 20000, Latency.of_seconds([0.05] * 98 + [0.3, 0.3]), 0),
        ],
        reads=[
            _level("redis", 300, 0.0008),
            _level("postgres", 300, 0.004),
            _level(CLUSTER_READS, 300, 0.0012),
        ],
        sessions=MemoryFigure(10_000, 7_000_000, 312.0),
    )


def test_report_has_the_figures_the_issue_names() -> None:
    report = build_report(_results())
    assert report["events_per_s"] == 6000.0
    assert report["baseline_events_per_s"] == 600.0
    assert report["ceiling_events_per_s"] == 40000.0
    assert report["ours_vs_baseline"] == 10.0
    assert report["ours_vs_ceiling"] == 0.15
    assert set(report["freshness_p99_ms"]) == {"500", "2000"}
    assert report["freshness_p99_ms"]["500"] == 50.0
    assert report["read_p99_ms"]["session"]["300"] == pytest.approx(0.8, abs=0.01)
    assert report["postgres_read_p99_ms"]["voice"]["300"] == pytest.approx(4.0, abs=0.05)
    assert report["cluster_read_p99_ms"]["ai"]["300"] == pytest.approx(1.2, abs=0.01)
    assert report["cluster_read_p99_vs_single"]["voice"] == pytest.approx(1.5, abs=0.01)
    assert report["ours_cluster_vs_single"] is None  # no cluster throughput run
    assert report["redis_bytes_per_session"] == 700.0
    assert report["worker_peak_rss_mb"] == 210.0
    orjson.dumps(report)  # JSON-ready: no NaN, no dataclasses


def test_the_headline_is_the_faster_of_one_process_and_one_per_core() -> None:
    results = _results(4000.0)
    results.ours_multi = Throughput(200_000, 200_000 / 7000, True, processes=2)
    report = build_report(results)
    assert report["events_per_s"] == 7000.0
    assert report["worker_processes"] == 2
    assert report["events_per_s_one_process"] == 4000.0
    assert report["ours_vs_baseline"] == pytest.approx(7000 / 600, abs=0.01)
    assert report["throughput"]["ours_processes"]["processes"] == 2
    assert report["worker_peak_rss_mb"] == 210.0  # of the one-process worker
    one = build_report(_results(4000.0))
    assert one["worker_processes"] == 1 and one["events_per_s"] == 4000.0
    slower = _results(4000.0)
    slower.ours_multi = Throughput(200_000, 200_000 / 3000, True, processes=2)
    assert build_report(slower)["worker_processes"] == 1  # the faster one is the headline


def test_the_group_is_stable_after_the_last_recovery() -> None:
    log = (
        "[2026-11-26 00:27:48,114] [23310] [INFO] [^---Recovery]: Worker ready \n"
        "[2026-11-26 00:27:49,000] [23310] [INFO] [^Worker]: Ready \n"
        "[2026-11-26 00:27:50,278] [23311] [INFO] [^---Recovery]: Worker ready \n"
        "[2026-11-26 00:27:51,000] [23311] [WARNING] something else\n"
    )
    stable = last_ready(log)
    assert stable is not None
    assert stable - datetime(2026, 11, 26, 0, 27, 48, 114000).timestamp() == pytest.approx(2.164)
    assert last_ready("[2026-11-26 00:27:48,114] [1] [INFO] starting\n") is None


def test_targets_met_and_missed() -> None:
    verdicts = {t.name: t.met for t in check_targets(build_report(_results()))}
    assert verdicts["events/s end to end"] is True
    assert verdicts["ours / baseline"] is True
    assert verdicts["ours / ceiling"] is False  # 15 % < 30 %
    assert verdicts["freshness p99 at 2000/s (ms)"] is False  # the 300 ms outlier is the p99
    assert verdicts["session read p99 at 300 users (ms)"] is True
    assert verdicts["Redis bytes per active session"] is True
    slow = {t.name: t.met for t in check_targets(build_report(_results(4000.0)))}
    assert slow["events/s end to end"] is False


def test_a_partial_run_reports_unmeasured_targets_as_unknown() -> None:
    report = build_report(Results(mode="quick"))
    assert report["events_per_s"] is None
    assert all(t.met is None for t in check_targets(report))
    orjson.dumps(report)
    assert len(tables(report)) == 7
    assert throughput_rows(report) == []


def test_served_by_shows_the_split() -> None:
    assert served_by({"redis": 300}) == "redis 100%"
    assert served_by({"redis": 75, "postgres": 25}) == "redis 75% / postgres 25%"
    assert served_by({}) == "—"


# --- against the hand-batched baseline, and CPU time per event --------------------------
def _cpu_results() -> Results:
    """1 process 6 000/s, 2 processes 9 000/s, hand-batched 10 000/s, ceiling 40 000/s."""
    return Results(
        mode="quick",
        ours=Throughput(
            60_000, 10.0, True, worker_cpu_s=4.8, postgres_cpu_s=1.5, cpu_events=60_000
        ),
        ours_multi=Throughput(
            45_000, 5.0, True, processes=2, worker_cpu_s=3.0, postgres_cpu_s=1.0, cpu_events=50_000
        ),
        batched=Throughput(60_000, 6.0, True, worker_cpu_s=2.4, postgres_cpu_s=1.2),
        baseline=Throughput(6_000, 10.0, False, worker_cpu_s=3.0, postgres_cpu_s=6.0),
        ceiling=Throughput(60_000, 1.5, True, worker_cpu_s=1.2),
        faust_floor=Throughput(60_000, 4.0, True, worker_cpu_s=1.8),
    )


def test_cpu_per_event_is_in_microseconds_over_the_cpu_window() -> None:
    assert per_event_us(2.4, 60_000) == pytest.approx(40.0)
    assert math.isnan(per_event_us(None, 60_000))
    assert math.isnan(per_event_us(1.0, 0))
    results = _cpu_results()
    assert results.ours is not None and results.ours_multi is not None
    assert results.ours.worker_cpu_us == pytest.approx(80.0)
    # --processes: the CPU window counts its own events (50 000), not the timed ones
    assert results.ours_multi.worker_cpu_us == pytest.approx(60.0)
    assert results.ours_multi.postgres_cpu_us == pytest.approx(20.0)
    assert math.isnan(Throughput(10, 1.0, True).worker_cpu_us)


def test_report_compares_every_run_with_the_hand_batched_baseline() -> None:
    report = build_report(_cpu_results())
    assert report["batched_events_per_s"] == 10_000.0
    assert report["events_per_s_processes"] == 9_000.0
    assert report["ours_vs_batched"] == 0.6
    assert report["ours_processes_vs_batched"] == 0.9
    assert report["ours_processes_vs_ceiling"] == 0.225
    assert report["worker_cpu_us_per_event"] == 80.0
    assert report["postgres_cpu_us_per_event"] == 25.0
    t = report["throughput"]
    assert t["batched"]["worker_cpu_us_per_event"] == 40.0
    assert t["batched"]["vs_batched"] == 1.0
    assert t["ours"]["worker_cpu_vs_batched"] == 2.0
    assert t["ours"]["postgres_cpu_vs_batched"] == 1.25
    assert t["ours_processes"]["cpu_events"] == 50_000
    assert t["baseline"]["postgres_cpu_us_per_event"] == 1000.0
    assert t["ceiling"]["of_ceiling"] == 1.0
    assert t["ceiling"]["postgres_cpu_us_per_event"] is None  # not measured
    # what Faust alone costs, and what is left for rpcache's own pipeline
    assert report["faust_floor_cpu_us_per_event"] == 30.0
    assert report["pipeline_cpu_us_per_event"] == 50.0
    assert t["faust_floor"]["events_per_s"] == 15_000.0
    orjson.dumps(report)


def test_targets_against_the_hand_batched_baseline() -> None:
    targets = {t.name: t for t in check_targets(build_report(_cpu_results()))}
    assert targets["ours (1 process) / hand-batched"].met is False  # 0.6 < 1.0
    assert targets["ours (--processes) / hand-batched"].met is False  # 0.9 < 1.5
    assert targets["ours (--processes) / ceiling"].met is False  # 22.5 % < 25 %
    assert targets["worker CPU per event, 1 process (µs)"].met is False  # 80 > 60
    assert targets["ours (--processes) / ceiling"].unit == "%"
    fast = _cpu_results()
    fast.ours = Throughput(60_000, 5.0, True, worker_cpu_s=3.0)
    fast.ours_multi = Throughput(60_000, 3.0, True, processes=2)
    met = {t.name: t.met for t in check_targets(build_report(fast))}
    assert met["ours (1 process) / hand-batched"] is True  # 12 000 / 10 000
    assert met["ours (--processes) / hand-batched"] is True  # 20 000 / 10 000
    assert met["ours (--processes) / ceiling"] is True  # 50 %
    assert met["worker CPU per event, 1 process (µs)"] is True  # 50 µs


def test_the_throughput_table_has_a_row_per_run() -> None:
    rows = throughput_rows(build_report(_cpu_results()))
    assert all(len(row) == len(THROUGHPUT_COLUMNS) for row in rows)
    by_run = {row[0]: row[1:] for row in rows}
    assert list(by_run) == [
        "ceiling",
        "ours, 1 process",
        "ours, --processes 2",
        "Faust floor (agents + acks, nothing behind)",
        "hand-batched",
        "naive (capped)",
    ]
    assert by_run["ours, 1 process"] == (
        "60,000",
        "6,000",
        "0.60×",
        "15%",
        "80.0 (2.00×)",
        "25.0 (1.25×)",
    )
    assert by_run["hand-batched"] == ("60,000", "10,000", "1.00×", "25%", "40.0", "20.0")
    assert by_run["ceiling"][-1] == "—"
    assert by_run["naive (capped)"][-1] == "1,000 (50.00×)"
    one = _cpu_results()
    one.ours_multi = None
    assert len(throughput_rows(build_report(one))) == 5  # no --processes run


def test_proc_stat_fields_come_after_the_last_parenthesis() -> None:
    line = (
        "3232 (postgres: a (b) c) S 3231 3232 3232 0 -1 4194368 615 0 0 0 1 4 0 0 20 0 1 0"
        " 633196 227930112 6676 18446744073709551615\n"
    )
    stat = parse_proc_stat(line)
    assert (stat.pid, stat.comm, stat.ppid, stat.cpu_ticks) == (3232, "postgres: a (b) c", 3231, 5)
    with pytest.raises(ValueError):
        parse_proc_stat("garbage (x) S y")


def test_cpu_delta_counts_the_processes_alive_at_the_end() -> None:
    before = {1: 10.0, 2: 5.0, 3: 7.0}
    after = {1: 12.5, 2: 5.5, 4: 0.75, 9: 100.0}  # 3 exited, 4 started, 9 excluded
    assert cpu_delta(before, after, exclude={9}) == pytest.approx(2.5 + 0.5 + 0.75)
    assert cpu_delta({}, {}) == 0.0


def test_the_cpu_window_opens_at_the_last_sample_before_the_timed_window() -> None:
    samples = [CpuSample(t, {1: t}, {}) for t in (10.0, 10.1, 10.2, 10.3)]
    assert window_start(samples, 10.25).at == 10.2
    assert window_start(samples, 10.2).at == 10.2
    assert window_start(samples, 9.0).at == 10.0  # before every sample: the first one


# --- the baselines' Redis commands --------------------------------------------------------
class _Recorder:
    """Anything with redis-py's command methods: records each call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def command(*args: Any, **kwargs: Any) -> str:
            self.calls.append((name, args))
            return name

        return command


class _AsyncRecorder(_Recorder):
    """A client whose commands are awaitables, run (recorded) only when awaited."""

    def __getattr__(self, name: str) -> Any:
        async def command(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args))

        return command


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": "e1",
        "user_id": "u1",
        "session_id": "s1",
        "occurred_at": "2026-11-29T10:00:00Z",
        **fields,
    }


AT = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def test_a_pipeline_gets_the_commands_the_naive_baseline_awaits() -> None:
    event = _event("session.started", speaker_id=3)
    queued = _Recorder()
    returned = list(redis_commands(queued, event, AT))
    assert returned == [name for name, _ in queued.calls]  # one call per yield
    assert [name for name, _ in queued.calls] == [
        "hset",
        "expire",
        "hset",
        "hincrby",
        "expire",
        "hincrby",
        "hincrby",
        "expire",
    ]
    awaited = _AsyncRecorder()
    asyncio.run(naive_redis(awaited, event, AT))  # type: ignore[arg-type]
    assert awaited.calls == queued.calls
    ai = _Recorder()
    list(redis_commands(ai, _event("ai.response", cache_hit=True, latency_ms=120), AT))
    assert [name for name, _ in ai.calls][:1] == ["hincrby"]  # a hit stores nothing
    assert len(ai.calls) == 1 + 3 * 3  # and three latency windows: zadd, trim, expire


# --- small parsers ----------------------------------------------------------------------
def test_peak_rss_comes_from_vmhwm() -> None:
    status = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  215040 kB\nVmRSS:\t 200000 kB\n"
    assert parse_vm_hwm_mb(status) == 210.0
    assert math.isnan(parse_vm_hwm_mb("Name:\tpython\n"))


def test_urls_point_at_the_benchmark_database_and_redis_db() -> None:
    assert with_database("postgresql://u:p@h:5/rpcache?x=1", "b") == "postgresql://u:p@h:5/b?x=1"
    assert with_redis_db("redis://h:6379/0", 7) == "redis://h:6379/7"


def test_phases_parse_in_run_order() -> None:
    assert parse_phases("all") == (
        "throughput",
        "stages",
        "freshness",
        "memory",
        "reads",
        "sink",
    )
    assert parse_phases("reads, throughput") == ("throughput", "reads")
    with pytest.raises(ValueError):
        parse_phases("speed")


# --- the workload -----------------------------------------------------------------------
def _decode(value: bytes, topic: str) -> object:
    return decode_event(value, topic=topic, max_bytes=1_048_576, max_audio_bytes=716_800)


def test_every_generated_event_is_valid_and_the_mix_is_realistic() -> None:
    workload = Workload("t", users=50, audio=audio_pool((0.5,)))
    messages = list(workload.messages(3000))
    decoded = [_decode(m.value, m.topic) for m in messages]
    assert not [d for d in decoded if isinstance(d, Rejection)]
    expected = workload.expected
    assert expected.events == 3000
    ai_hit_rate = expected.hit_rate("ai.response", len(expected.ai_keys))
    assert 0.75 < ai_hit_rate < 0.9
    assert {m.topic for m in messages} == {
        "session-events",
        "inference-events",
        "synthesis-events",
    }
    assert expected.audio_bytes == 16_044 * len(expected.voice_keys)  # 0.5 s WAVs
    assert len(expected.redis_keys()) == len(
        expected.users | {f"s{s}" for s in expected.open_sessions}
    ) + len(expected.ai_keys) + len(expected.voice_keys)


def test_data_sets_are_valid_events_that_each_create_their_key() -> None:
    sessions = open_sessions("t", 3)
    ai = ai_misses("t", 4, sessions.sessions)
    voice = voice_misses("t", 2, sessions.sessions, "UklGRg==")
    for data in (sessions, ai, voice):
        for m in data.messages:
            assert not isinstance(_decode(m.value, m.topic), Rejection)
    assert len(sessions.keys()) == 6  # a session and a user state each
    assert len(ai.keys()) == 4 and len(ai.prompts) == 4
    assert len(voice.keys()) == 2 and len(voice.voices) == 2


def test_the_sink_table_has_a_row_per_variant() -> None:
    from streams.tools.bench.report import Results, build_report, sink_table
    from streams.tools.bench.sink import SinkFigure

    r = Results(mode="quick")
    r.sink = [
        SinkFigure("single", 10_000, 100_000.0, 1.0),
        SinkFigure("cluster", 10_000, 50_000.0, 0.5),
    ]
    report = build_report(r)
    assert [row["vs_single"] for row in report["sink"]] == [1.0, 0.5]
    assert sink_table(report).row_count == 2


def test_the_sink_workload_has_every_kind_of_op() -> None:
    from streams.projections import HashWrite, SortedSetAdd, StringWrite
    from streams.tools.bench.sink import BATCH_OPS, workload

    batches = workload(2, "t")
    assert [len(b) for b in batches] == [BATCH_OPS, BATCH_OPS]
    kinds = {type(op) for op in batches[0]}
    assert kinds == {HashWrite, StringWrite, SortedSetAdd}


def test_the_cluster_run_is_a_row_of_its_own_not_the_headline() -> None:
    from streams.tools.bench.report import throughput_rows

    results = _results(4000.0)
    results.ours_cluster = Throughput(200_000, 200_000 / 9000, True)
    report = build_report(results)
    assert report["events_per_s"] == 4000.0  # the headline stays one Redis's
    assert report["throughput"]["ours_cluster"]["events_per_s"] == 9000.0
    labels = [row[0] for row in throughput_rows(report)]
    assert "ours, 1 process, Redis Cluster" in labels
