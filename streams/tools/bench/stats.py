"""Percentiles and latency summaries: the pure arithmetic of the benchmark.

Kept apart from the measuring code so it is unit-tested on its own
(tests/unit/test_bench.py): a wrong percentile would make every figure of
the report wrong while every run still "works".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation between order statistics.

    The same definition as numpy's default (`method="linear"`), so figures can
    be checked with any tool. NaN for no values: an empty sample has no p99,
    and 0 would read as "instant".
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Latency:
    """p50 / p99 / max of a sample of latencies, in milliseconds."""

    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of_seconds(cls, seconds: Sequence[float]) -> Latency:
        """Summarise latencies measured in seconds (what `time.perf_counter` gives)."""
        ms = [s * 1000 for s in seconds]
        return cls(
            n=len(ms),
            p50_ms=percentile(ms, 50),
            p99_ms=percentile(ms, 99),
            max_ms=max(ms) if ms else math.nan,
        )

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN (no sample) becomes null."""
        return {
            "n": self.n,
            "p50_ms": finite(self.p50_ms),
            "p99_ms": finite(self.p99_ms),
            "max_ms": finite(self.max_ms),
        }


def finite(value: float, digits: int = 3) -> float | None:
    """Rounded for the report; None for NaN/inf, which JSON cannot carry."""
    return round(value, digits) if math.isfinite(value) else None


def rate(count: int, seconds: float) -> float:
    """Events per second; NaN when no time elapsed (nothing was measured)."""
    return count / seconds if seconds > 0 else math.nan


def ratio(ours: float, other: float) -> float:
    """ours / other; NaN when either side is missing or the other is zero."""
    if not (math.isfinite(ours) and math.isfinite(other)) or other == 0:
        return math.nan
    return ours / other


def per_event_us(cpu_s: float | None, events: int) -> float:
    """CPU seconds spent on `events` events, in microseconds per event; NaN when not
    measured or no event was counted."""
    if cpu_s is None or events <= 0:
        return math.nan
    return cpu_s / events * 1e6
