"""A worker's start as `rpcache check` and /dashboard see it.

The previous run left its heartbeat row "stopped" (its pid). From the moment
the new worker's web server answers, both must show the new run (its pid,
"starting" until it consumes, then running), never the old stopped row; the
heartbeat timer (60 s here) plays no part in that.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest

from streams.observe import heartbeat
from streams.observe.heartbeat import Heartbeat
from tests.integration.conftest import IsolatedRun, eventually, isolated_run, rpcache_check

pytestmark = pytest.mark.integration
READY = "[^Worker]: Ready"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def row(run: IsolatedRun) -> Heartbeat | None:
    async with run.pool.acquire() as conn:
        return await heartbeat.read(conn, run.settings.app_id, run.settings.worker_id)


async def dashboard(http: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    """/dashboard.json, or None while the web server does not answer."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/dashboard.json") as resp:
            if resp.status != 200:
                return None
            body: dict[str, Any] = await resp.json()
            return body
    except aiohttp.ClientError:
        return None


async def test_check_and_dashboard_see_the_new_run_from_the_first_answer(
    test_env: dict[str, str],
) -> None:
    port = free_port()
    async with (
        isolated_run(
            test_env,
            "startup",
            8,
            WORKER_ID="startup",
            WORKER_WEB_ENABLED="true",
            WORKER_WEB_PORT=str(port),
            HEARTBEAT_INTERVAL_S="60",
        ) as run,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        # The first run stops cleanly: its row says stopped, with its pid.
        assert run.worker.proc is not None
        old_pid = run.worker.proc.pid
        assert run.worker.stop() == 0
        old = await row(run)
        assert old is not None and old.pid == old_pid and old.stopped_at is not None
        code, out = await rpcache_check(run.env)
        assert code == 1 and "stopped at" in out and f"(pid {old_pid})" in out, out

        # The next run: watch the row and the web server from the moment it is started.
        readies = run.worker.log_text().count(READY)
        run.worker.start()
        assert run.worker.proc is not None
        new_pid = run.worker.proc.pid
        seen: list[tuple[int, bool, bool]] = []  # (pid, stopped, starting) as they change
        deadline = time.monotonic() + 60
        first_answer = None
        while first_answer is None:
            assert time.monotonic() < deadline, run.worker.log_text()[-3000:]
            assert run.worker.proc.poll() is None, run.worker.log_text()[-3000:]
            beat = await row(run)
            assert beat is not None
            state = (beat.pid, beat.stopped_at is not None, beat.starting)
            if not seen or seen[-1] != state:
                seen.append(state)
            first_answer = await dashboard(http, port)
            if first_answer is None:
                await asyncio.sleep(0.02)

        # As soon as the web server answers: the new pid, not stopped, in PostgreSQL ...
        beat = await row(run)
        assert beat is not None and beat.pid == new_pid and beat.stopped_at is None, seen
        # ... on the dashboard (no stopped row of the old pid) ...
        workers = [w for w in first_answer["workers"] if w["worker_id"] == "startup"]
        assert [(w["pid"], w["stopped"]) for w in workers] == [(new_pid, False)], first_answer
        # ... and for `rpcache check`, starting or already running.
        code, out = await rpcache_check(run.env)
        assert code == 0, out
        assert f"pid {new_pid} on" in out and "stopped" not in out and str(old_pid) not in out
        assert "is starting, not consuming yet" in out or "beat" in out, out
        # The row went from the old stopped one straight to the new starting one.
        assert seen[0] == (old_pid, True, False), seen
        assert (new_pid, False, True) in seen, seen
        assert all(pid == new_pid for pid, _, _ in seen[1:]), seen

        # Once it consumes: running, without waiting for the heartbeat timer (60 s).
        await eventually(
            lambda: asyncio.sleep(0, run.worker.log_text().count(READY)),
            lambda n: n > readies,
            60,
            0.2,
        )
        beat = await eventually(lambda: row(run), lambda b: b is not None and not b.starting, 30)
        assert beat is not None and beat.pid == new_pid
        code, out = await rpcache_check(run.env)
        assert code == 0 and "starting" not in out and f"(pid {new_pid} on" in out, out
        d = await eventually(
            lambda: dashboard(http, port),
            lambda d: (
                d is not None
                and [(w["pid"], w["starting"]) for w in d["workers"]] == [(new_pid, False)]
            ),
            10,
            0.5,
        )
        assert d is not None
