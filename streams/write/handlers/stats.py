"""`stats:realtime:{day}`: every field, from PostgreSQL, written by one writer.

Batches only add to `daily_counters` (in their transaction, so exactly once).
The hash is projected by the leader worker on a timer (`STATS_INTERVAL_S`):
today's, and every day whose counters moved since shortly before its last
look. One writer, one write at a time: two batches committing side by side
(three agents, or several worker processes) can no longer land their Redis
writes in the opposite order and leave a hash without the other's counts,
and batches no longer queue on the `daily_stats_writes` row.

A day's hash is rewritten when a field changed (the gauges active_sessions
and system_load of today included), when Redis no longer holds what this
process last wrote there (`overwritten`: a replay or the automatic rebuild
that read PostgreSQL before the last change and wrote after it, a FLUSHALL,
a hand), or `refresh_s` after its last write; its TTL runs 24 h from the
last write (`daily_stats_writes`), which replay reads too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from schemas.keys import SESSION_TTL, business_day
from streams.projections import (
    RedisOp,
    figures_of_days,
    project_stats,
    stats_fields,
    stats_text,
)
from streams.store.base import Tx
from streams.store.postgres import Connection
from streams.store.postgres_store import as_tx

OLDEST_DAY = timedelta(days=1)
"""Days before today whose hash is still written: yesterday's late events move it,
an older day's do not recreate it (it would live 24 h more for a day nobody reads
as realtime; PostgreSQL's daily_counters still count them)."""
LOOKBACK = timedelta(minutes=5)
"""How far before a look counters are searched for changes: a batch transaction
stamps `updated_at` when it starts and may commit seconds later (retries)."""

Fields = dict[str, int | float]


@dataclass(frozen=True, slots=True)
class Written:
    fields: Fields
    at: float
    """time.monotonic() of the write."""


def recent_days(days: set[date], today: date) -> set[date]:
    """The days whose hash is written: today and up to `OLDEST_DAY` before; pure.
    A backlog event from 1970 must not bring `stats:realtime:1970-01-01` back."""
    return {day for day in days if today - OLDEST_DAY <= day <= today}


def days_to_write(
    current: dict[date, Fields], written: dict[date, Written], now_mono: float, refresh_s: float
) -> list[date]:
    """Days whose hash differs from what was last written, or is due a refresh; pure."""
    return sorted(
        day
        for day, fields in current.items()
        if (last := written.get(day)) is None
        or last.fields != fields
        or now_mono - last.at >= refresh_s
    )


def overwritten(written: dict[date, Written], shown: dict[date, dict[str, str]]) -> list[date]:
    """Days whose hash in Redis (`shown`: its fields, {} when the key is gone or of
    another type) no longer holds what this process last wrote there; pure.

    Without this a stale write by someone else (a replay that read PostgreSQL
    before the last change and wrote after it) would stand until `refresh_s`,
    since the figures themselves did not change since our write. Only our
    fields count: a write is an HSET, which would never remove a field someone
    added, so comparing it too would rewrite the hash at every tick.
    """
    days = []
    for day, last in written.items():
        ours = stats_text(last.fields)
        held = shown.get(day, {})
        if {name: held.get(name) for name in ours} != ours:
            days.append(day)
    return sorted(days)


class StatsProjector:
    """The stats writer of one worker process (only the leader's runs)."""

    def __init__(self, tz: ZoneInfo, capacity: int, refresh_s: float = 60.0) -> None:
        self.tz = tz
        self.capacity = capacity
        self.refresh_s = refresh_s
        self.written: dict[date, Written] = {}
        """What this process last wrote (empty at start); checked against Redis
        before each look (`overwritten`)."""

    async def due(
        self, tx: Tx | Connection, now: datetime, now_mono: float
    ) -> tuple[list[RedisOp], dict[date, Written]]:
        """The writes due now, and what to remember once Redis has them.

        `tx`: a unit of work, or a PostgreSQL connection inside a transaction.
        """
        tx = as_tx(tx)
        today = business_day(now, self.tz)
        days = recent_days({today} | await tx.days_changed_since(now - LOOKBACK), today)
        counters = await tx.day_counters(days)
        active = await tx.count_open_sessions(now, SESSION_TTL.total_seconds())
        figures = figures_of_days(counters, today, active, self.capacity)
        current = {day: stats_fields(f) for day, f in figures.items()}
        due = days_to_write(current, self.written, now_mono, self.refresh_s)
        if not due:
            return [], {}
        stamped = await tx.touch_stats_days(due)
        ops = [project_stats(day, current[day], stamped[day], now) for day in due]
        return ops, {day: Written(current[day], now_mono) for day in due}

    def forget(self, days: list[date]) -> None:
        """Write these days again at the next look (`overwritten`)."""
        for day in days:
            self.written.pop(day, None)

    def remember(self, written: dict[date, Written], now_mono: float) -> None:
        """Record writes Redis has taken; drop days not written for a long time
        (out of the look-back, they are only looked at again when they change)."""
        self.written.update(written)
        horizon = now_mono - LOOKBACK.total_seconds() - self.refresh_s
        for day in [d for d, w in self.written.items() if w.at < horizon]:
            del self.written[day]
