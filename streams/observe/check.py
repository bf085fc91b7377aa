"""`rpcache check`: is the worker alive, and do its dependencies answer?

Four checks, run concurrently, each within CHECK_TIMEOUT_S:

- heartbeat: the row of this worker (APP_ID, WORKER_ID) in
  `worker_heartbeats` was written less than HEARTBEAT_MAX_AGE_S ago, by
  PostgreSQL's clock, and the worker did not stop; with WORKER_PROCESSES=N,
  the rows `WORKER_ID-0` … `WORKER_ID-(N-1)` of all its processes. A worker
  that wrote its first beat but does not consume yet passes as "starting";
  if it stays so, its beat goes stale (the timer beats once it consumes);
- postgres, redis, kafka: a connection is made and the server answers.

Exit status 0 when all pass; 1 otherwise, with one line per check saying why.
It never retries and never migrates: a healthcheck must answer now, and must
not change what it looks at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from schemas.keys import format_utc
from streams.database import asyncpg_options
from streams.observe import heartbeat
from streams.observe.heartbeat import Heartbeat, child_worker_ids
from streams.security import kafka_options, redis_options
from streams.settings import Settings
from streams.store import heartbeats


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name:<10} {self.detail}"


def judge_heartbeat(
    beat: Heartbeat | None, app_id: str, worker_id: str, max_age_s: float
) -> CheckResult:
    """Fresh, stale, stopped or missing; pure."""
    who = f"worker {worker_id!r} of {app_id!r}"
    if beat is None:
        return CheckResult("heartbeat", False, f"no heartbeat from {who}: is it running?")
    if beat.stopped_at is not None:
        return CheckResult(
            "heartbeat", False, f"{who} stopped at {format_utc(beat.stopped_at)} (pid {beat.pid})"
        )
    if beat.age_s > max_age_s:
        return CheckResult(
            "heartbeat",
            False,
            f"{who} is stale: last beat {beat.age_s:.1f} s ago (limit {max_age_s:g} s,"
            f" pid {beat.pid} on {beat.host}{', still starting' if beat.starting else ''})",
        )
    if beat.starting:
        return CheckResult(
            "heartbeat",
            True,
            f"{who} is starting, not consuming yet: beat {beat.age_s:.1f} s ago"
            f" (pid {beat.pid} on {beat.host})",
        )
    return CheckResult(
        "heartbeat", True, f"{who} beat {beat.age_s:.1f} s ago (pid {beat.pid} on {beat.host})"
    )


def judge_heartbeats(results: list[CheckResult]) -> CheckResult:
    """One line for the processes of one worker: ok only when every one is; pure."""
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if not r.ok]
    if failed:
        return CheckResult("heartbeat", False, "; ".join(r.detail for r in failed))
    return CheckResult(
        "heartbeat",
        True,
        f"all {len(results)} processes beat: " + "; ".join(r.detail for r in results),
    )


async def _timed(name: str, timeout_s: float, probe: Callable[[], Awaitable[str]]) -> CheckResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            detail = await probe()
    except TimeoutError:
        return CheckResult(name, False, f"no answer within {timeout_s:g} s")
    except Exception as exc:
        kind, text = type(exc).__name__, str(exc)
        return CheckResult(name, False, text if text.startswith(kind) else f"{kind}: {text}")
    return CheckResult(name, True, f"{detail} ({(time.monotonic() - started) * 1000:.0f} ms)")


async def check_postgres(
    settings: Settings, worker_ids: list[str], max_age_s: float
) -> tuple[CheckResult, CheckResult]:
    """PostgreSQL answers, and the heartbeats it holds (one connection for both)."""
    beats: dict[str, Heartbeat | None] = {}

    async def probe() -> str:
        conn = await asyncpg.connect(
            settings.database_url.get_secret_value(),
            timeout=settings.check_timeout_s,
            **asyncpg_options(settings),
        )
        try:
            version = await heartbeats.server_version(conn)
            for worker_id in worker_ids:
                try:
                    beats[worker_id] = await heartbeat.read(conn, settings.app_id, worker_id)
                except asyncpg.UndefinedTableError:
                    beats[worker_id] = None  # no worker ever migrated this database
        finally:
            await conn.close()
        return f"PostgreSQL {version}"

    pg = await _timed("postgres", settings.check_timeout_s, probe)
    if not pg.ok:
        return CheckResult("heartbeat", False, "unknown: PostgreSQL did not answer"), pg
    judged = [judge_heartbeat(b, settings.app_id, w, max_age_s) for w, b in beats.items()]
    return judge_heartbeats(judged), pg


async def check_redis(settings: Settings) -> CheckResult:
    async def probe() -> str:
        url = settings.redis_url.get_secret_value()
        client = Redis.from_url(
            url,
            socket_timeout=settings.check_timeout_s,
            socket_connect_timeout=settings.check_timeout_s,
            **redis_options(settings, url),
        )
        try:
            await client.ping()
            info = await client.info("server")
        finally:
            await client.aclose()
        return f"Redis {info.get('redis_version', '?')} PONG"

    return await _timed("redis", settings.check_timeout_s, probe)


async def check_kafka(settings: Settings) -> CheckResult:
    async def probe() -> str:
        admin = AIOKafkaAdminClient(
            **kafka_options(settings),
            request_timeout_ms=int(settings.check_timeout_s * 1000),
        )
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
        finally:
            await admin.close()
        brokers = len(cluster.get("brokers", []))
        return f"{brokers} broker{'s' if brokers != 1 else ''}"

    return await _timed("kafka", settings.check_timeout_s, probe)


async def run_checks(
    settings: Settings, worker_id: str | None = None, max_age_s: float | None = None
) -> list[CheckResult]:
    """heartbeat, postgres, redis, kafka — in that order."""
    worker_ids = (
        [worker_id]
        if worker_id
        else child_worker_ids(settings.worker_id, settings.worker_processes)
    )
    (beat, pg), redis, kafka = await asyncio.gather(
        check_postgres(
            settings,
            worker_ids,
            settings.heartbeat_max_age_s if max_age_s is None else max_age_s,
        ),
        check_redis(settings),
        check_kafka(settings),
    )
    return [beat, pg, redis, kafka]
