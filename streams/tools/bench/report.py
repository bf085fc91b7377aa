"""From measurements to `bench.json`, the targets of issues 6 and 15, and the printed tables.

Pure functions of the results (no I/O), so the arithmetic of the report is
unit-tested (tests/unit/test_bench.py). The JSON keeps the figures the issues
name at the top level (`events_per_s`, `ours_vs_batched`,
`worker_cpu_us_per_event`, `freshness_p99_ms`, `read_p99_ms`, …) and the
detail under `throughput` (per run: events/s, CPU µs per event of the
consumer and of PostgreSQL, each against the hand-batched baseline and the
ceiling), `freshness`, `reads` and `memory`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from streams.tools.bench.freshness import Freshness
from streams.tools.bench.memory import MemoryFigure
from streams.tools.bench.reads import CLUSTER_READS, KINDS, ReadLevel
from streams.tools.bench.sink import SinkFigure
from streams.tools.bench.stages import StageFigure
from streams.tools.bench.stats import finite, ratio
from streams.tools.bench.throughput import Throughput

READ_TARGET_USERS = 300
READ_TARGETS_MS = {"session": 1.0, "ai": 2.0, "voice": 5.0}
FRESHNESS_TARGET_RATE = 2000
FRESHNESS_TARGET_MS = 200.0
EVENTS_TARGET = 5000.0
BASELINE_RATIO_TARGET = 10.0
CEILING_RATIO_TARGET = 0.30
SESSION_BYTES_TARGET = 2048
# issue 15: against the hand-batched baseline
ONE_PROCESS_VS_BATCHED_TARGET = 1.0
PROCESSES_VS_BATCHED_TARGET = 1.5
PROCESSES_CEILING_TARGET = 0.25
WORKER_CPU_US_TARGET = 60.0
"""The worker's CPU time per event, one process, in microseconds."""


@dataclass
class Results:
    """Everything one run measured; absent parts were not run."""

    mode: str
    machine: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    ours: Throughput | None = None
    """One worker process."""
    ours_multi: Throughput | None = None
    """`rpcache worker --processes N` (one per core), when the machine has several.
    The headline `events_per_s` is the faster of the two."""
    ours_cluster: Throughput | None = None
    """One worker process with every key family on the local Redis Cluster (design layout)."""
    faust_floor: Throughput | None = None
    """Faust alone (streams/tools/bench/faust_floor.py): its CPU per event bounds ours."""
    baseline: Throughput | None = None
    """The naive baseline: per event, one INSERT and the Redis commands, each awaited."""
    batched: Throughput | None = None
    """The hand-batched baseline: getmany, one executemany and one pipeline per batch."""
    ceiling: Throughput | None = None
    freshness: list[Freshness] = field(default_factory=list)
    reads: list[ReadLevel] = field(default_factory=list)
    sessions: MemoryFigure | None = None
    ai_entries: MemoryFigure | None = None
    voice_entries: MemoryFigure | None = None
    live_worker_peak_rss_mb: float | None = None
    sink: list[SinkFigure] = field(default_factory=list)
    """The Redis sink alone: one node, a cluster, redis-py's cluster pipeline."""
    stages: list[StageFigure] = field(default_factory=list)
    """The write path alone: CPU per event of each pipeline step, per topic and all."""


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    value: float | None
    met: bool | None
    """None when the figure was not measured."""
    unit: str = ""
    """How the value reads: `×` (a ratio), `%` (a share, value 0..1) or plain."""


def _num(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else finite(value, digits)


def _rate(t: Throughput | None) -> float:
    return t.events_per_s if t else math.nan


def _worker_us(t: Throughput | None) -> float:
    return t.worker_cpu_us if t else math.nan


def _postgres_us(t: Throughput | None) -> float:
    return t.postgres_cpu_us if t else math.nan


def _throughput(
    t: Throughput | None, batched: Throughput | None, ceiling: Throughput | None
) -> dict[str, Any] | None:
    """One run's figures; ratios are this run's ÷ the hand-batched baseline's, and
    `of_ceiling` its events/s ÷ the ceiling's. CPU times in seconds and µs per event."""
    if t is None:
        return None
    return {
        "events": t.events,
        "seconds": _num(t.seconds),
        "events_per_s": _num(t.events_per_s, 1),
        "complete": t.complete,
        "startup_s": _num(t.startup_s),
        "peak_rss_mb": _num(t.peak_rss_mb, 1),
        "processes": t.processes,
        "settle_s": _num(t.settle_s),
        "vs_batched": _num(ratio(t.events_per_s, _rate(batched)), 3),
        "of_ceiling": _num(ratio(t.events_per_s, _rate(ceiling)), 3),
        "cpu_events": t.events if t.cpu_events is None else t.cpu_events,
        "worker_cpu_s": _num(t.worker_cpu_s),
        "postgres_cpu_s": _num(t.postgres_cpu_s),
        "worker_cpu_us_per_event": _num(t.worker_cpu_us, 1),
        "postgres_cpu_us_per_event": _num(t.postgres_cpu_us, 1),
        "worker_cpu_vs_batched": _num(ratio(t.worker_cpu_us, _worker_us(batched)), 3),
        "postgres_cpu_vs_batched": _num(ratio(t.postgres_cpu_us, _postgres_us(batched)), 3),
    }


def _memory(m: MemoryFigure | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "entries": m.entries,
        "used_memory_delta": m.used_memory_delta,
        "bytes_per_entry": _num(m.bytes_per_entry, 1),
        "memory_usage_per_key": _num(m.key_bytes, 1),
    }


def _p99_by_kind(levels: list[ReadLevel], source: str) -> dict[str, dict[str, float | None]]:
    return {
        kind: {
            str(level.users): _num(level.latency[kind].p99_ms)
            for level in levels
            if level.source == source and kind in level.latency
        }
        for kind in KINDS
    }


def _p99_at(levels: list[ReadLevel], source: str, kind: str) -> float:
    """A kind's read p99 (ms) from `source` at `READ_TARGET_USERS` users; NaN if not run."""
    for level in levels:
        if level.source == source and level.users == READ_TARGET_USERS and kind in level.latency:
            return level.latency[kind].p99_ms
    return math.nan


def build_report(r: Results) -> dict[str, Any]:
    """The JSON document of a run (`bench.json`)."""
    runs = [t for t in (r.ours, r.ours_multi) if t is not None]
    best = max(runs, key=lambda t: t.events_per_s) if runs else None
    ours = best.events_per_s if best else math.nan
    one, multi = _rate(r.ours), _rate(r.ours_multi)
    baseline, batched, ceiling = _rate(r.baseline), _rate(r.batched), _rate(r.ceiling)
    report: dict[str, Any] = {
        "mode": r.mode,
        "machine": r.machine,
        "events_per_s": _num(ours, 1),
        "worker_processes": best.processes if best else None,
        "events_per_s_one_process": _num(one, 1),
        "events_per_s_processes": _num(multi, 1),
        "baseline_events_per_s": _num(baseline, 1),
        "batched_events_per_s": _num(batched, 1),
        "ceiling_events_per_s": _num(ceiling, 1),
        "ours_vs_baseline": _num(ratio(ours, baseline), 2),
        "ours_vs_ceiling": _num(ratio(ours, ceiling), 3),
        "ours_vs_batched": _num(ratio(one, batched), 3),
        "ours_processes_vs_batched": _num(ratio(multi, batched), 3),
        "ours_processes_vs_ceiling": _num(ratio(multi, ceiling), 3),
        "worker_cpu_us_per_event": _num(_worker_us(r.ours), 1),
        "faust_floor_cpu_us_per_event": _num(_worker_us(r.faust_floor), 1),
        "pipeline_cpu_us_per_event": _num(_worker_us(r.ours) - _worker_us(r.faust_floor), 1),
        "postgres_cpu_us_per_event": _num(_postgres_us(r.ours), 1),
        "write_path_cpu_us_per_event": next(
            (f.total_us for f in r.stages if f.topic == "all"), None
        ),
        "write_path_postgres_cpu_us_per_event": next(
            (f.server_us for f in r.stages if f.topic == "all"), None
        ),
        "freshness_p99_ms": {str(f.rate): _num(f.latency.p99_ms) for f in r.freshness},
        "read_p99_ms": _p99_by_kind(r.reads, "redis"),
        "postgres_read_p99_ms": _p99_by_kind(r.reads, "postgres"),
        "cluster_read_p99_ms": _p99_by_kind(r.reads, CLUSTER_READS),
        "cluster_read_p99_vs_single": {
            kind: _num(
                ratio(_p99_at(r.reads, CLUSTER_READS, kind), _p99_at(r.reads, "redis", kind)), 2
            )
            for kind in KINDS
        },
        "ours_cluster_vs_single": _num(ratio(_rate(r.ours_cluster), _rate(r.ours)), 2),
        "redis_bytes_per_session": _num(r.sessions.bytes_per_entry, 1) if r.sessions else None,
        "worker_peak_rss_mb": _num(r.ours.peak_rss_mb, 1) if r.ours else None,
        "throughput": {
            "workload": r.workload,
            "ours": _throughput(r.ours, r.batched, r.ceiling),
            "ours_processes": _throughput(r.ours_multi, r.batched, r.ceiling),
            "ours_cluster": _throughput(r.ours_cluster, r.batched, r.ceiling),
            "faust_floor": _throughput(r.faust_floor, r.batched, r.ceiling),
            "batched": _throughput(r.batched, r.batched, r.ceiling),
            "baseline": _throughput(r.baseline, r.batched, r.ceiling),
            "ceiling": _throughput(r.ceiling, r.batched, r.ceiling),
        },
        "freshness": [
            {"rate": f.rate, "produced": f.produced, "unseen": f.unseen, **f.latency.as_dict()}
            for f in r.freshness
        ],
        "stages": [asdict(f) for f in r.stages],
        "sink": [
            {
                "variant": f.variant,
                "ops": f.ops,
                "ops_per_s": _num(f.ops_per_s, 1),
                "vs_single": _num(f.vs_single, 3),
            }
            for f in r.sink
        ],
        "reads": [
            {
                "source": level.source,
                "users": level.users,
                "seconds": level.seconds,
                "reads_per_s": _num(level.reads_per_s, 1),
                "served_by": dict(level.sources),
                "errors": dict(level.errors),
                "reader": dict(level.reader),
                **{kind: lat.as_dict() for kind, lat in level.latency.items()},
            }
            for level in r.reads
        ],
        "memory": {
            "sessions": _memory(r.sessions),
            "ai_entries": _memory(r.ai_entries),
            "voice_entries": _memory(r.voice_entries),
            "live_worker_peak_rss_mb": _num(r.live_worker_peak_rss_mb, 1),
        },
    }
    report["targets"] = [_target_dict(t) for t in check_targets(report)]
    return report


def _target_dict(t: Target) -> dict[str, Any]:
    return {"name": t.name, "goal": t.goal, "value": t.value, "met": t.met}


def _at_least(name: str, goal: str, value: float | None, floor: float, unit: str = "") -> Target:
    return Target(name, goal, value, None if value is None else value >= floor, unit)


def _at_most(name: str, goal: str, value: float | None, ceiling: float, unit: str = "") -> Target:
    return Target(name, goal, value, None if value is None else value <= ceiling, unit)


def check_targets(report: dict[str, Any]) -> list[Target]:
    """The targets of issues 6 and 15 against a report's figures."""
    reads = report["read_p99_ms"]
    targets = [
        _at_least("events/s end to end", "≥ 5000", report["events_per_s"], EVENTS_TARGET),
        _at_least(
            "ours / baseline", "≥ 10×", report["ours_vs_baseline"], BASELINE_RATIO_TARGET, "×"
        ),
        _at_least("ours / ceiling", "≥ 30 %", report["ours_vs_ceiling"], CEILING_RATIO_TARGET, "%"),
        _at_least(
            "ours (1 process) / hand-batched",
            "≥ 1.0×",
            report["ours_vs_batched"],
            ONE_PROCESS_VS_BATCHED_TARGET,
            "×",
        ),
        _at_least(
            "ours (--processes) / hand-batched",
            "≥ 1.5×",
            report["ours_processes_vs_batched"],
            PROCESSES_VS_BATCHED_TARGET,
            "×",
        ),
        _at_least(
            "ours (--processes) / ceiling",
            "≥ 25 %",
            report["ours_processes_vs_ceiling"],
            PROCESSES_CEILING_TARGET,
            "%",
        ),
        _at_most(
            "worker CPU per event, 1 process (µs)",
            "≤ 60",
            report["worker_cpu_us_per_event"],
            WORKER_CPU_US_TARGET,
        ),
        _at_most(
            f"freshness p99 at {FRESHNESS_TARGET_RATE}/s (ms)",
            "≤ 200",
            report["freshness_p99_ms"].get(str(FRESHNESS_TARGET_RATE)),
            FRESHNESS_TARGET_MS,
        ),
    ]
    for kind, limit in READ_TARGETS_MS.items():
        targets.append(
            _at_most(
                f"{kind} read p99 at {READ_TARGET_USERS} users (ms)",
                f"≤ {limit:g}",
                reads.get(kind, {}).get(str(READ_TARGET_USERS)),
                limit,
            )
        )
    targets.append(
        _at_most(
            "Redis bytes per active session",
            "≤ 2048",
            report["redis_bytes_per_session"],
            SESSION_BYTES_TARGET,
        )
    )
    return targets


# --- tables --------------------------------------------------------------------------
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def _verdict(met: bool | None) -> str:
    return {True: "[green]met[/]", False: "[red]missed[/]", None: "—"}[met]


def summary_table(report: dict[str, Any]) -> Table:
    """The headline figures and the targets."""
    t = report["throughput"]
    table = Table(title=f"rpcache bench ({report['mode']})")
    for column in ("figure", "value", "target", ""):
        table.add_column(column, justify="left" if column == "figure" else "right")
    processes = (t["ours_processes"] or {}).get("processes", "N")
    rows = [
        ("events/s end to end (ours, 1 process)", _fmt(report["events_per_s_one_process"])),
        (
            f"events/s end to end (ours, --processes {processes})",
            _fmt(report["events_per_s_processes"]),
        ),
        (
            "events/s hand-batched baseline (batch INSERT + pipeline)",
            _fmt(report["batched_events_per_s"]),
        ),
        (
            "events/s naive baseline (per-event INSERT + Redis)",
            _fmt(report["baseline_events_per_s"]),
        ),
        ("events/s ceiling (consume + decode only)", _fmt(report["ceiling_events_per_s"])),
        ("worker start-up before the first batch (s)", _fmt((t["ours"] or {}).get("startup_s"))),
        ("worker peak RSS, 1 process (MB)", _fmt(report["worker_peak_rss_mb"])),
        ("events/s, 1 process, Redis Cluster ÷ one Redis", _fmt(report["ours_cluster_vs_single"])),
        ("worker CPU per event: Faust floor (µs)", _fmt(report["faust_floor_cpu_us_per_event"])),
        (
            "worker CPU per event: rpcache's pipeline (1 process − floor, µs)",
            _fmt(report["pipeline_cpu_us_per_event"]),
        ),
        (
            "CPU per event of the write path alone, in process (µs)",
            _fmt(report["write_path_cpu_us_per_event"]),
        ),
        (
            "PostgreSQL CPU per event of the write path alone (µs)",
            _fmt(report["write_path_postgres_cpu_us_per_event"]),
        ),
        *(
            (
                f"{kind} read p99 at {READ_TARGET_USERS} users, Redis Cluster ÷ one Redis",
                _fmt(report["cluster_read_p99_vs_single"][kind]),
            )
            for kind in KINDS
        ),
    ]
    for name, value in rows:
        table.add_row(name, value, "", "")
    for target in check_targets(report):
        if target.unit == "%" and target.value is not None:
            shown = f"{target.value:.0%}"
        else:
            shown = _fmt(target.value, " ×" if target.unit == "×" else "")
        table.add_row(target.name, shown, target.goal, _verdict(target.met))
    return table


THROUGHPUT_COLUMNS = (
    "run",
    "events",
    "events/s",
    "÷ batched",
    "of ceiling",
    "worker µs/event",
    "PostgreSQL µs/event",
)
THROUGHPUT_CAPTION = (
    "µs/event: CPU time (user + system) per event, of the consumer (worker) and of"
    " PostgreSQL; ÷ batched and (n×): against the hand-batched baseline"
)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _cpu_cell(us: float | None, vs_batched: float | None, is_batched: bool) -> str:
    """`48.2 (0.87×)`; the hand-batched baseline's own cell without its ratio of 1."""
    if us is None:
        return "—"
    text = f"{us:,.0f}" if us >= 100 else f"{us:.1f}"
    return text if is_batched or vs_batched is None else f"{text} ({_times(vs_batched)})"


def throughput_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per run that ran: THROUGHPUT_COLUMNS, as text."""
    t = report["throughput"]
    multi = t.get("ours_processes") or {}
    runs = (
        ("ceiling", "ceiling"),
        ("ours, 1 process", "ours"),
        (f"ours, --processes {multi.get('processes', '')}", "ours_processes"),
        ("ours, 1 process, Redis Cluster", "ours_cluster"),
        ("Faust floor (agents + acks, nothing behind)", "faust_floor"),
        ("hand-batched", "batched"),
        ("naive", "baseline"),
    )
    rows: list[tuple[str, ...]] = []
    for label, key in runs:
        run = t.get(key)
        if run is None:
            continue
        rows.append(
            (
                label if run["complete"] else f"{label} (capped)",
                f"{run['events']:,}",
                _fmt(run["events_per_s"]),
                _times(run["vs_batched"]),
                _share(run["of_ceiling"]),
                _cpu_cell(
                    run["worker_cpu_us_per_event"], run["worker_cpu_vs_batched"], key == "batched"
                ),
                _cpu_cell(
                    run["postgres_cpu_us_per_event"],
                    run["postgres_cpu_vs_batched"],
                    key == "batched",
                ),
            )
        )
    return rows


def throughput_table(report: dict[str, Any]) -> Table:
    """Every throughput run against the hand-batched baseline and the ceiling."""
    table = Table(title="throughput: events/s and CPU per event", caption=THROUGHPUT_CAPTION)
    for column in THROUGHPUT_COLUMNS:  # on a narrow terminal, wrap: never cut a figure
        table.add_column(
            column, justify="left" if column == "run" else "right", overflow="fold", min_width=7
        )
    for row in throughput_rows(report):
        table.add_row(*row)
    return table


def freshness_table(report: dict[str, Any]) -> Table:
    table = Table(title="freshness: produce → readable in Redis (ms)")
    for column in ("rate (events/s)", "probes", "p50", "p99", "max", "unseen"):
        table.add_column(column, justify="right")
    for f in report["freshness"]:
        table.add_row(
            str(f["rate"]),
            str(f["n"]),
            _fmt(f["p50_ms"]),
            _fmt(f["p99_ms"]),
            _fmt(f["max_ms"]),
            str(f["unseen"]),
        )
    return table


def reads_table(report: dict[str, Any]) -> Table:
    table = Table(title="reads: CacheReader p50 / p99 (ms)")
    columns = ("source", "users", "reads/s", "session", "ai", "voice 100 KB", "served by", "errors")
    for column in columns:
        table.add_column(column, justify="right")
    for level in report["reads"]:
        cells = [
            f"{_fmt(level[k]['p50_ms'])} / {_fmt(level[k]['p99_ms'])}" if k in level else "—"
            for k in KINDS
        ]
        served = served_by(level["served_by"])
        table.add_row(
            level["source"],
            str(level["users"]),
            _fmt(level["reads_per_s"]),
            *cells,
            served,
            errors_cell(level.get("errors") or {}),
        )
    return table


def served_by(counts: dict[str, int]) -> str:
    """`redis 100%`, or the split when the reader fell back (e.g. a Redis budget ran out)."""
    total = sum(counts.values())
    if not total:
        return "—"
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return " / ".join(f"{name} {n / total:.0%}" for name, n in ranked)


def errors_cell(errors: dict[str, int]) -> str:
    """`0`, or how many reads raised and as what (`CacheUnavailableError 412`)."""
    if not errors:
        return "0"
    return ", ".join(f"{name} {n}" for name, n in sorted(errors.items(), key=lambda kv: -kv[1]))


def memory_table(report: dict[str, Any]) -> Table:
    table = Table(title="Redis memory")
    for column in ("data set", "entries", "used_memory Δ / entry (B)", "MEMORY USAGE / key (B)"):
        table.add_column(column, justify="right")
    names = {
        "sessions": "active session (+ user state)",
        "ai_entries": "AI response",
        "voice_entries": "voice clip 100 KB",
    }
    for name, label in names.items():
        m = report["memory"][name]
        if m is not None:
            table.add_row(
                label,
                str(m["entries"]),
                _fmt(m["bytes_per_entry"]),
                _fmt(m["memory_usage_per_key"]),
            )
    return table


def tables(report: dict[str, Any]) -> list[Table]:
    return [
        summary_table(report),
        throughput_table(report),
        freshness_table(report),
        reads_table(report),
        memory_table(report),
        stages_table(report),
        sink_table(report),
    ]


def stages_table(report: dict[str, Any]) -> Table:
    """The write path alone, stage by stage (streams/tools/bench/stages.py)."""
    table = Table(
        title="Write path alone (no Kafka, no Faust): CPU µs per event by step",
        caption="decode … CPU total: this process (PostgreSQL: its client side); "
        "PostgreSQL server: the server's own CPU over the same batches",
    )
    columns = ("topic", "events", "decode", "PostgreSQL", "Redis", "rest", "CPU total", "wall",
               "PostgreSQL server")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "topic" else "right")
    for row in report.get("stages", []):
        table.add_row(
            row["topic"].removesuffix("-events"),
            f"{row['events']:,}",
            *(_fmt(row[k]) for k in ("decode_us", "postgres_us", "redis_us", "rest_us")),
            _fmt(row["total_us"]),
            _fmt(row["wall_us"]),
            _fmt(row.get("server_us")),
        )
    return table


def sink_table(report: dict[str, Any]) -> Table:
    """The Redis sink alone (streams/tools/bench/sink.py)."""
    table = Table(title="Redis sink alone: batches of 1 000 ops (median of alternated rounds)")
    for column in ("variant", "ops", "ops/s", "÷ single node"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in report.get("sink", []):
        table.add_row(
            row["variant"], f"{row['ops']:,}", _fmt(row["ops_per_s"]), _fmt(row["vs_single"])
        )
    return table
