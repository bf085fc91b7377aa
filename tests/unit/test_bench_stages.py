"""The write-path benchmark's batches and figures (`streams/tools/bench/stages.py`)."""

from __future__ import annotations

from collections import defaultdict

from schemas.keys import SOURCE_TOPICS, topic_name
from streams.tools.bench.report import Results, build_report, stages_table
from streams.tools.bench.stages import PARTITIONS, StageCpu, StageFigure, batches
from streams.tools.bench.workload import Workload, audio_pool


def test_batches_are_one_topic_each_in_turn_and_keep_each_partitions_order() -> None:
    todo = batches("p.", Workload("t", users=40, audio=audio_pool((0.5,))), 3_000, 100)
    assert sum(len(b) for b in todo) == 3_000
    assert all(len(b) <= 100 and len({m.topic for m in b}) == 1 for b in todo)
    assert {b[0].topic for b in todo[:3]} == {topic_name("p.", s) for s in SOURCE_TOPICS}
    offsets: dict[tuple[str, int], list[int]] = defaultdict(list)
    partition_of_key: dict[tuple[str, bytes | None], int] = {}
    for m in (m for b in todo for m in b):
        offsets[(m.topic, m.partition)].append(m.offset)
        assert partition_of_key.setdefault((m.topic, m.key), m.partition) == m.partition
        assert 0 <= m.partition < PARTITIONS
    assert all(seen == list(range(len(seen))) for seen in offsets.values())


def test_a_figure_is_microseconds_per_event_and_rest_is_what_the_steps_leave() -> None:
    cpu = StageCpu(events=2_000, decode=0.02, postgres=0.05, redis=0.01, total=0.09, wall=0.2)
    figure = StageFigure.of("session-events", cpu)
    assert (figure.decode_us, figure.postgres_us, figure.redis_us) == (10.0, 25.0, 5.0)
    assert (figure.rest_us, figure.total_us, figure.wall_us) == (5.0, 45.0, 100.0)
    assert figure.server_us is None  # PostgreSQL not a local process: no figure


def test_the_server_figure_is_postgresql_cpu_per_event() -> None:
    cpu = StageCpu(events=2_000, total=0.09, server=0.07)
    assert StageFigure.of("all", cpu).server_us == 35.0


def test_the_stages_table_has_a_row_per_topic_and_the_summary_the_total() -> None:
    r = Results(mode="quick")
    r.stages = [
        StageFigure.of("session-events", StageCpu(1_000, 0.01, 0.02, 0.005, 0.04, 0.08)),
        StageFigure.of("all", StageCpu(1_000, 0.01, 0.02, 0.005, 0.04, 0.08)),
    ]
    report = build_report(r)
    assert report["write_path_cpu_us_per_event"] == 40.0
    assert report["write_path_postgres_cpu_us_per_event"] is None
    assert stages_table(report).row_count == 2
