"""`worker_heartbeats`: one row per worker of a consumer group, and reading them back.

The row's times come from PostgreSQL's clock (`now()`), so the age a reader
computes does not depend on the clocks of two hosts. What a beat means and
when it is written: `streams.observe.heartbeat`. `server_version` is the
other thing `rpcache check` asks PostgreSQL, on the same connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from streams.store.postgres import Connection


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker_id: str
    host: str
    pid: int
    web_port: int | None
    started_at: datetime
    beat_at: datetime
    stopped_at: datetime | None
    age_s: float
    """Seconds since beat_at, by PostgreSQL's clock."""
    starting: bool = False
    """Written at start and not consuming yet (no partition assignment so far)."""


async def beat(
    conn: Connection,
    app_id: str,
    worker_id: str,
    host: str,
    pid: int,
    web_port: int | None,
    started_at: datetime,
    starting: bool,
) -> None:
    """This worker is alive now: its row, created or taken over (stopped_at cleared)."""
    await conn.execute(
        "INSERT INTO worker_heartbeats"
        " (app_id, worker_id, host, pid, web_port, started_at, beat_at, stopped_at, starting)"
        " VALUES ($1, $2, $3, $4, $5, $6, now(), NULL, $7)"
        " ON CONFLICT (app_id, worker_id) DO UPDATE SET host = EXCLUDED.host,"
        " pid = EXCLUDED.pid, web_port = EXCLUDED.web_port, started_at = EXCLUDED.started_at,"
        " beat_at = now(), stopped_at = NULL, starting = EXCLUDED.starting",
        app_id,
        worker_id,
        host,
        pid,
        web_port,
        started_at,
        starting,
    )


async def stopped(conn: Connection, app_id: str, worker_id: str, pid: int) -> None:
    """Mark the row stopped, if this process (`pid`) still owns it."""
    await conn.execute(
        "UPDATE worker_heartbeats SET stopped_at = now()"
        " WHERE app_id = $1 AND worker_id = $2 AND pid = $3",
        app_id,
        worker_id,
        pid,
    )


_SELECT = (
    "SELECT worker_id, host, pid, web_port, started_at, beat_at, stopped_at,"
    " extract(epoch FROM now() - beat_at)::float8 AS age_s, starting FROM worker_heartbeats"
)


async def read(conn: Connection, app_id: str, worker_id: str) -> Heartbeat | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE app_id = $1 AND worker_id = $2", app_id, worker_id)
    return None if row is None else Heartbeat(**dict(row))


async def workers(conn: Connection, app_id: str) -> list[Heartbeat]:
    """Every worker of the group that ever beat, the latest first."""
    rows = await conn.fetch(f"{_SELECT} WHERE app_id = $1 ORDER BY beat_at DESC", app_id)
    return [Heartbeat(**dict(r)) for r in rows]


async def server_version(conn: Connection) -> str:
    """PostgreSQL's version, as `rpcache check` reports it."""
    return str(await conn.fetchval("SHOW server_version"))
