"""The budget of one round trip (streams/read/budget.py): Redis's time, not the process's.

The reader's own tests (test_reader.py) show the same through a read; these
drive `within_budget` alone.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from streams.read import budget
from streams.read.budget import ProcessLateError, loop_tolerance_s, within_budget
from streams.read.stats import Counters


def test_loop_tolerance_is_a_tenth_of_the_budget_but_at_least_2_ms() -> None:
    assert loop_tolerance_s(0.05) == pytest.approx(0.005)
    assert loop_tolerance_s(0.01) == 0.002


async def test_a_hung_call_runs_out_of_the_budget_as_a_redis_timeout() -> None:
    """A `TimeoutError`, which the breaker counts (a loop only a little late, on a
    busy machine, adds its lateness first but is within the grace)."""
    counts = Counters()
    started = time.perf_counter()
    with pytest.raises(TimeoutError):
        await within_budget(lambda: asyncio.sleep(30), 0.02, counts)
    assert 0.015 < time.perf_counter() - started < budget.OVERLOAD_GRACE_S


async def test_a_loop_late_past_the_grace_is_the_process_s_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(budget, "OVERLOAD_GRACE_S", 0.05)
    counts = Counters()

    async def round_trip() -> None:
        await asyncio.sleep(0)  # in flight, the budget's timer set
        _block_loop(0.1)  # the 20 ms timer fires 80 ms late, past the 50 ms grace
        await asyncio.sleep(30)

    with pytest.raises(ProcessLateError):
        await within_budget(round_trip, 0.02, counts)
    assert counts.loop_late == 1


def _block_loop(seconds: float) -> None:
    time.sleep(seconds)  # a CPU-bound stretch of the service (or a GC pause)
