"""The worker's heartbeat: a row in PostgreSQL `worker_heartbeats`, and reading it back.

Why PostgreSQL rather than a file: `rpcache check` runs wherever an operator
or an orchestrator runs it (docker-compose runs it inside the worker's
container, an operator from anywhere), and PostgreSQL is already a dependency
of both. The row's times come from PostgreSQL's clock, so the age the check
computes does not depend on the clocks of the two hosts.

A beat proves the worker's event loop is alive and can write to PostgreSQL;
the timer that writes it runs on the same loop as the agents. The first beat
of a run is written as soon as the worker's connections are open, before its
web server and agents start, marked `starting`: from then on the check and the
dashboard see this run (its pid), never the row the previous run left. The
mark goes once the worker consumes (its first partition assignment is done).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from streams.settings import Settings
from streams.store.postgres import Connection

STARTED_AT = datetime.now(UTC)
"""When this process started (imported at worker start)."""


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


async def beat(conn: Connection, settings: Settings, *, starting: bool = False) -> None:
    """Record that this worker is alive now (and whether it is still starting)."""
    await conn.execute(
        "INSERT INTO worker_heartbeats"
        " (app_id, worker_id, host, pid, web_port, started_at, beat_at, stopped_at, starting)"
        " VALUES ($1, $2, $3, $4, $5, $6, now(), NULL, $7)"
        " ON CONFLICT (app_id, worker_id) DO UPDATE SET host = EXCLUDED.host,"
        " pid = EXCLUDED.pid, web_port = EXCLUDED.web_port, started_at = EXCLUDED.started_at,"
        " beat_at = now(), stopped_at = NULL, starting = EXCLUDED.starting",
        settings.app_id,
        settings.worker_id,
        socket.gethostname(),
        os.getpid(),
        settings.worker_web_port if settings.worker_web_enabled else None,
        STARTED_AT,
        starting,
    )


async def stopped(conn: Connection, settings: Settings) -> None:
    """A clean stop: the check then says "stopped" instead of "stale"."""
    await conn.execute(
        "UPDATE worker_heartbeats SET stopped_at = now()"
        " WHERE app_id = $1 AND worker_id = $2 AND pid = $3",
        settings.app_id,
        settings.worker_id,
        os.getpid(),
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


def child_worker_id(worker_id: str, index: int) -> str:
    """WORKER_ID of child `index` of `rpcache worker --processes N` (its heartbeat row)."""
    return f"{worker_id}-{index}"


def child_worker_ids(worker_id: str, processes: int) -> list[str]:
    """The heartbeat rows of a `--processes` worker (what `rpcache check` reads)."""
    if processes <= 1:
        return [worker_id]
    return [child_worker_id(worker_id, i) for i in range(processes)]
