"""`stats:realtime:{day}`: every field, from PostgreSQL, written by every family.

Any batch that moves a counter rewrites the whole hash of the days it touched
plus today's (the gauges active_sessions and system_load are of now), so the
hash never mixes fresh and stale fields and never drifts from PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from schemas.keys import SESSION_TTL
from streams.projections import RedisOp, project_stats, stats_fields
from streams.reducers.sessions import business_day
from streams.sinks import postgres as pg
from streams.sinks.postgres import Connection


class StatsProjector:
    def __init__(self, tz: ZoneInfo, capacity: int) -> None:
        self.tz = tz
        self.capacity = capacity

    async def project(self, conn: Connection, days: Iterable[date], now: datetime) -> list[RedisOp]:
        today = business_day(now, self.tz)
        wanted = set(days) | {today}
        counters = await pg.day_counters(conn, wanted)
        active = await pg.count_open_sessions(conn, now, SESSION_TTL.total_seconds())
        written = await pg.touch_stats_days(conn, wanted)
        return [
            project_stats(
                day,
                stats_fields(counters[day], active if day == today else None, self.capacity),
                written[day],
                now,
            )
            for day in sorted(wanted)
        ]
