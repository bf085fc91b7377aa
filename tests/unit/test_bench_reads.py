"""The reads benchmark records reads that raised as figures of their level, instead of dying.

Before: `rpcache bench --only reads` stopped at the 3 000-user level on the
first `CacheUnavailableError` (PostgreSQL's pool saturated), so no figure of
that level, or of the ones after it, was ever printed.
"""

from __future__ import annotations

import uuid

from rich.console import Console

from streams.read.reader import CacheReader
from streams.settings import Settings
from streams.tools.bench.reads import READER_FIGURES, ReadTargets, run_level
from streams.tools.bench.report import Results, build_report, errors_cell, reads_table
from tests.unit.test_reader import FakePool, FakeRedis

TARGETS = ReadTargets(sessions=[str(uuid.UUID(int=1))], prompts=["p"], voices=[(1, "t")])


async def test_reads_that_raise_are_counted_per_level_and_printed() -> None:
    redis, pool = FakeRedis(), FakePool()
    redis.mode = "down"
    pool.down = True  # neither can answer: every read raises CacheUnavailableError
    settings = Settings(read_timeout_ms=20, breaker_fail_max=1, breaker_reset_s=60)
    reader = CacheReader(settings, master=redis, pool=pool)  # type: ignore[arg-type]
    level = await run_level(
        reader, "redis", TARGETS, users=3, seconds=0.2, think_s=0.02, warmup_s=0
    )
    assert level.error_count == level.errors["CacheUnavailableError"] > 0
    assert level.reads == 0 and not level.sources  # no latency for reads that raised
    assert set(level.reader) == set(READER_FIGURES)
    assert level.reader["breaker_opens"] == 1
    assert level.reader["fallbacks"] >= level.error_count

    report = build_report(Results(mode="quick", reads=[level]))
    assert report["reads"][0]["errors"] == {"CacheUnavailableError": level.error_count}
    assert report["reads"][0]["reader"]["breaker_opens"] == 1
    console = Console(width=200, record=True)
    console.print(reads_table(report))
    assert f"CacheUnavailableError {level.error_count}" in console.export_text()


def test_errors_cell() -> None:
    assert errors_cell({}) == "0"
    assert errors_cell({"A": 1, "B": 5}) == "B 5, A 1"
