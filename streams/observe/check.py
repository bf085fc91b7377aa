"""`rpcache check`: is the worker alive, and do its dependencies answer?

Four checks, run concurrently, each within CHECK_TIMEOUT_S:

- heartbeat: the row of this worker (APP_ID, WORKER_ID) in
  `worker_heartbeats` was written less than HEARTBEAT_MAX_AGE_S ago, by
  PostgreSQL's clock, and the worker did not stop; with WORKER_PROCESSES=N,
  the rows `WORKER_ID-0` … `WORKER_ID-(N-1)` of all its processes. A worker
  that wrote its first beat but does not consume yet passes as "starting";
  if it stays so, its beat goes stale (the timer beats once it consumes);
- postgres, redis, kafka: a connection is made and the server answers; for
  Redis, every distinct family target (SPEC §8), each with a warning when
  its maxmemory-policy does not fit its family (`judge_policy`).

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
from streams.redis_targets import KeyFamily, RedisTargets
from streams.security import kafka_options, redis_options
from streams.settings import Settings
from streams.store import heartbeats


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    warn: bool = False
    """Passes, but something is configured against the design (printed `warn`)."""

    def line(self) -> str:
        status = "FAIL" if not self.ok else "warn" if self.warn else "ok"
        return f"{status:<5} {self.name:<10} {self.detail}"


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
    """PING the Redis of REDIS_URL (the stack probe of the tests uses this one)."""

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


POLICY_RULES: dict[KeyFamily, tuple[Callable[[str], bool], str]] = {
    "sessions": (
        lambda p: p.startswith("volatile-") or p == "noeviction",
        "session state must live out its TTL, and allkeys-* evicts it early"
        " (the design: volatile-ttl; any volatile-* or noeviction fits)",
    ),
    "ai": (lambda p: p.endswith("-lru"), "the design evicts old AI responses by LRU (allkeys-lru)"),
    "voice": (
        lambda p: p.endswith("-lfu"),
        "the design keeps voice clips by use frequency (allkeys-lfu)",
    ),
}
"""SPEC §8 and the design's eviction per family: (does a policy fit, why)."""


def judge_policy(families: tuple[KeyFamily, ...], policy: str) -> str | None:
    """None when `policy` fits the target's families, else why not; pure.

    A target that serves the session family is judged by the session rule
    only: one Redis has one policy, and evicting session state early is the
    fault that matters; LRU/LFU preferences apply to a cache's own target.
    """
    judged = ("sessions",) if "sessions" in families else families
    for family in judged:
        fits, why = POLICY_RULES[family]
        if not fits(policy):
            return f"maxmemory-policy {policy} does not fit {family}: {why}"
    return None


async def check_redis_targets(settings: Settings) -> list[CheckResult]:
    """PING every distinct Redis target (SPEC §8) and judge its eviction policy.

    One line per target, named `redis` when every family shares REDIS_URL and
    `redis:<families>` otherwise. A policy that does not fit is a warning
    (`warn`, exit status unchanged): the cache still works, it evicts wrongly.
    """
    targets = RedisTargets.from_settings(
        settings,
        socket_timeout=settings.check_timeout_s,
        socket_connect_timeout=settings.check_timeout_s,
    )
    distinct = targets.distinct()

    async def one(families: tuple[KeyFamily, ...], client: Redis) -> CheckResult:
        name = "redis" if len(distinct) == 1 else f"redis:{'+'.join(families)}"
        where = targets.targets[families[0]].describe()
        policy: list[str] = []

        async def probe() -> str:
            await client.ping()
            info = await client.info("server")
            memory = await client.info("memory")
            policy.append(str(memory.get("maxmemory_policy", "?")))
            return (
                f"Redis {info.get('redis_version', '?')} PONG at {where},"
                f" maxmemory-policy {policy[0]}"
            )

        result = await _timed(name, settings.check_timeout_s, probe)
        if result.ok and policy and (why := judge_policy(families, policy[0])):
            return CheckResult(name, True, f"{result.detail}; {why}", warn=True)
        return result

    try:
        return list(await asyncio.gather(*(one(f, c) for f, c in distinct)))
    finally:
        await targets.aclose()


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
        check_redis_targets(settings),
        check_kafka(settings),
    )
    return [beat, pg, *redis, kafka]
