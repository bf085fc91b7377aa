"""The worker's heartbeat: a row in PostgreSQL `worker_heartbeats`, and reading it back
(the statements and the `Heartbeat` row: `streams.store.heartbeats`).

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
from datetime import UTC, datetime

from streams.settings import Settings
from streams.store import heartbeats
from streams.store.heartbeats import Heartbeat, read, workers
from streams.store.postgres import Connection

__all__ = [
    "STARTED_AT",
    "Heartbeat",
    "beat",
    "child_worker_id",
    "child_worker_ids",
    "read",
    "stopped",
    "workers",
]

STARTED_AT = datetime.now(UTC)
"""When this process started (imported at worker start)."""


async def beat(conn: Connection, settings: Settings, *, starting: bool = False) -> None:
    """Record that this worker is alive now (and whether it is still starting)."""
    await heartbeats.beat(
        conn,
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
    await heartbeats.stopped(conn, settings.app_id, settings.worker_id, os.getpid())


def child_worker_id(worker_id: str, index: int) -> str:
    """WORKER_ID of child `index` of `rpcache worker --processes N` (its heartbeat row)."""
    return f"{worker_id}-{index}"


def child_worker_ids(worker_id: str, processes: int) -> list[str]:
    """The heartbeat rows of a `--processes` worker (what `rpcache check` reads)."""
    if processes <= 1:
        return [worker_id]
    return [child_worker_id(worker_id, i) for i in range(processes)]
