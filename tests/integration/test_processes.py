"""`rpcache worker --processes 2` on the real stack: both consume, one unit for its supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.observe import heartbeat
from streams.observe.heartbeat import Heartbeat
from streams.store.postgres import Connection
from tests.integration.conftest import (
    IsolatedRun,
    eventually,
    isolated_run,
    rpcache_check,
    stored_count,
)

pytestmark = pytest.mark.integration
READY = "[^Worker]: Ready"


def two_free_ports() -> int:
    """A port p with p + 1 free too (the children listen on p and p + 1)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


async def wait_readies(run: IsolatedRun, count: int, after: int = 0) -> None:
    await eventually(
        lambda: asyncio.sleep(0, run.worker.log_text().count(READY)),
        lambda n: n >= after + count,
        timeout_s=90,
        interval_s=0.3,
    )


async def consumed(http: aiohttp.ClientSession, port: int) -> float:
    """Events this child consumed, from its own /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "rpcache_events_consumed_total"
    )


async def beats_of(conn: Connection, run: IsolatedRun) -> list[Heartbeat | None]:
    return [await heartbeat.read(conn, run.settings.app_id, f"procs-{i}") for i in (0, 1)]


async def live_pids(run: IsolatedRun, not_in: frozenset[int] = frozenset()) -> list[int]:
    """The pids of both children once each has written a heartbeat and not stopped
    (and is not one of the processes `not_in`, from an earlier start)."""

    async def probe() -> list[Heartbeat | None]:
        async with run.pool.acquire() as conn:
            return await beats_of(conn, run)

    beats = await eventually(
        probe,
        lambda bs: all(b is not None and b.stopped_at is None and b.pid not in not_in for b in bs),
        30,
    )
    return [b.pid for b in beats if b is not None]


async def test_two_processes_share_partitions_and_stop_as_one(test_env: dict[str, str]) -> None:
    port = two_free_ports()
    async with (
        isolated_run(
            test_env,
            "procs",
            2,
            WORKER_PROCESSES="2",
            WORKER_ID="procs",
            WORKER_WEB_ENABLED="true",
            WORKER_WEB_PORT=str(port),
            HEARTBEAT_INTERVAL_S="1",
        ) as run,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        await wait_readies(run, 2)
        # 200 users: their keys spread over all 4 partitions of the session topic.
        ids = [await run.publisher.user_login(f"procs-u{i}") for i in range(200)]
        await eventually(lambda: stored_count(run.pool, ids), lambda n: n == len(ids), 60)

        # Each child consumed a share: the group split the partitions between them.
        shares = [await consumed(http, port), await consumed(http, port + 1)]
        assert sum(shares) == len(ids) and all(shares), shares

        # One heartbeat row per child; `rpcache check` wants both.
        pids = await live_pids(run)
        assert len(set(pids)) == 2
        code, out = await rpcache_check(run.env)
        assert code == 0 and "all 2 processes beat" in out, out
        code, out = await rpcache_check({**run.env, "WORKER_PROCESSES": "1"}, "--processes", "2")
        assert code == 0 and "all 2 processes beat" in out, out
        code, out = await rpcache_check({**run.env, "WORKER_PROCESSES": "1"})  # row "procs": none
        assert code == 1 and "no heartbeat from worker 'procs'" in out, out

        # A child that dies takes the whole worker down, for its supervisor to restart.
        os.kill(pids[0], signal.SIGKILL)
        proc = run.worker.proc
        assert proc is not None
        code_after_kill = await asyncio.to_thread(proc.wait, 60)
        assert code_after_kill == 128 + signal.SIGKILL
        with pytest.raises(ProcessLookupError):
            os.kill(pids[1], 0)  # the other child was stopped too

        # Started again, the supervisor itself killed (SIGKILL, the OOM killer): the
        # children notice and stop cleanly instead of consuming on as orphans.
        readies = run.worker.log_text().count(READY)
        run.worker.start()
        await wait_readies(run, 2, after=readies)
        orphans = await live_pids(run, not_in=frozenset(pids))
        run.worker.kill()

        async def stopped() -> list[Heartbeat | None]:
            async with run.pool.acquire() as conn:
                return await beats_of(conn, run)

        beats = await eventually(
            stopped,
            lambda bs: all(b is not None and b.stopped_at is not None for b in bs),
            timeout_s=60,
        )
        assert sorted(b.pid for b in beats if b is not None) == sorted(orphans)
        assert "the supervisor (pid" in run.worker.log_text()

        # Started again: SIGTERM stops every child cleanly, exit status 0.
        readies = run.worker.log_text().count(READY)
        run.worker.start()
        await wait_readies(run, 2, after=readies)
        await live_pids(run, not_in=frozenset(pids + orphans))
        assert run.worker.stop() == 0
        async with run.pool.acquire() as conn:
            beats = await beats_of(conn, run)
        assert all(b is not None and b.stopped_at is not None for b in beats), [
            (b.worker_id, b.pid, b.beat_at, b.stopped_at) for b in beats if b
        ]
