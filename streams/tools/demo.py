"""`rpcache demo`: simulated roleplay traffic through the whole pipeline.

Starts a worker in a child process, runs the simulated roleplay services of
`streams.tools.simulate` (sessions, LLM turns with Zipf prompts, WAV voice clips,
a few malformed messages), waits until PostgreSQL holds every event, prints
what landed where for each family, and stops the worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import date, datetime
from pathlib import Path

import asyncpg
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from schemas.keys import (
    ai_response_key,
    business_day,
    metrics_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key,
)
from streams.publisher import EventPublisher
from streams.settings import Settings, get_settings
from streams.store import postgres as pg
from streams.store import progress
from streams.tools.simulate import Traffic, simulate
from streams.worker.runtime import open_pool, open_redis
from streams.worker.topics import ensure_topics

console = Console()


def start_worker(log_path: Path) -> subprocess.Popen[bytes]:
    """A real worker process, as an operator would run it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "WORKER_WEB_ENABLED": "false"},
    )


async def wait_stored(
    pool: asyncpg.Pool, ids: list[str], timeout_s: float, worker: subprocess.Popen[bytes]
) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline and worker.poll() is None:
        stored = await progress.events_stored_of(pool, ids)
        if stored == len(ids):
            return stored
        await asyncio.sleep(0.25)
    return stored


async def run_demo(users: int, sessions_per_user: int, events: int, timeout_s: float) -> int:
    settings = get_settings()
    run = uuid.uuid4().hex[:6]
    console.print(f"[bold]rpcache demo[/] run {run}: {users} users × {sessions_per_user} sessions")
    await ensure_topics(settings)
    pool = await open_pool(settings)
    redis = open_redis(settings)
    log_path = Path(settings.stack_dir) / "demo-worker.log"
    worker = start_worker(log_path)
    try:
        started = time.monotonic()
        async with EventPublisher.from_settings(settings) as publisher:
            traffic = await simulate(publisher, redis, run, users, sessions_per_user, events)
        published_s = time.monotonic() - started
        stored = await wait_stored(pool, traffic.event_ids, timeout_s, worker)
        if worker.poll() is not None:
            console.print(f"[red]the worker exited ({worker.returncode}); see {log_path}[/]")
        landed_s = time.monotonic() - started
        await asyncio.sleep(0.5)  # the Redis pipeline follows the commit
        ok = await summarise(settings, pool, redis, traffic, stored, published_s, landed_s)
        return 0 if ok else 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        await redis.aclose()
        await pool.close()


async def current_stats(
    pool: asyncpg.Pool, redis: Redis, day: date, timeout_s: float
) -> dict[str, str]:
    """Today's stats hash once the leader's stats timer caught up with PostgreSQL."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = _decode(await redis.hgetall(stats_key(day)))
        async with pool.acquire() as conn:
            counters = await pg.day_counters(conn, [day])
        started = counters[day].sessions_started
        if stats.get("total_sessions_today") == str(started) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


async def summarise(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: Redis,
    traffic: Traffic,
    stored: int,
    published_s: float,
    landed_s: float,
) -> bool:
    """Print what landed where, family by family; True when everything is there."""
    t = traffic
    today: date = business_day(datetime.now(settings.tz), settings.tz)

    async def present(keys: list[str]) -> int:
        return sum([await redis.exists(k) for k in keys])

    open_in_redis = await present([session_key(s) for s in t.open_sessions])
    ended_in_redis = await present([session_key(s) for s in t.ended_sessions])
    user_keys = await present([user_state_key(u) for u in t.users])
    ai_keys = await present([ai_response_key(p) for p in t.prompts])
    voice_keys = await present([voice_key(s, text) for s, text in t.voices])
    dead = await progress.dead_letters_keyed(pool, f"demo-{t.run}".encode())
    ai_rate = t.ai_hits / max(1, t.ai_hits + t.ai_misses)
    voice_rate = t.voice_hits / max(1, t.voice_hits + t.voice_misses)
    checks: list[tuple[str, str, object, object]] = [
        ("all", "events stored in PostgreSQL", stored, len(t.event_ids)),
        ("sessions", "session events published", t.session_events, t.session_events),
        ("sessions", "open sessions with session:{id}", open_in_redis, len(t.open_sessions)),
        ("sessions", "ended sessions left in Redis", ended_in_redis, 0),
        ("sessions", "user:{id}:state keys", user_keys, len(t.users)),
        ("inference", "ai.response hits / misses / failed",
         f"{t.ai_hits} / {t.ai_misses} / {t.ai_failed}", f"hit rate {ai_rate:.0%}"),
        ("inference", "ai_response:{H(prompt)} keys", ai_keys, len(t.prompts)),
        ("synthesis", "voice hits / misses / failed",
         f"{t.voice_hits} / {t.voice_misses} / {t.voice_failed}", f"hit rate {voice_rate:.0%}"),
        ("synthesis", "voice:{speaker}:{H(text)} keys", voice_keys, len(t.voices)),
        ("synthesis", "WAV audio published (KiB)", t.audio_bytes // 1024, "-"),
        ("dead letters", "malformed messages dead-lettered", dead, t.bad_messages),
    ]  # fmt: skip
    table = Table(title=f"rpcache demo {t.run}: what landed where")
    for column in ("family", "check", "value", "expected"):
        table.add_column(column, justify="right" if column in ("value", "expected") else "left")
    for family, name, value, expected in checks:
        table.add_row(family, name, str(value), str(expected))
    console.print(table)

    metrics = Table(title="metrics sorted sets (members now)")
    metrics.add_column("key")
    metrics.add_column("members", justify="right")
    for metric in ("response_time", "synthesis_time"):
        for window in ("1m", "5m", "1h"):
            key = metrics_key(metric, window)
            metrics.add_row(key, str(await redis.zcard(key)))
    console.print(metrics)
    stats = await current_stats(pool, redis, today, settings.stats_interval_s * 4 + 1)
    console.print(f"{stats_key(today)} (all runs today) = {stats}")
    console.print(
        f"{user_state_key(t.users[0])} = {_decode(await redis.hgetall(user_state_key(t.users[0])))}"
    )
    rate = len(t.event_ids) / landed_s if landed_s else 0.0
    console.print(
        f"{len(t.event_ids)} events published in {published_s:.1f} s (each awaited, as a service"
        f" would); all stored and projected after {landed_s:.1f} s ({rate:.0f} events/s)"
    )
    ok = (
        stored == len(t.event_ids)
        and open_in_redis == len(t.open_sessions)
        and ended_in_redis == 0
        and user_keys == len(t.users)
        and ai_keys == len(t.prompts)
        and voice_keys == len(t.voices)
        and dead == t.bad_messages
    )
    console.print("[green]demo OK[/]" if ok else "[red]demo FAILED: see the table above[/]")
    return ok


def _decode(mapping: dict[bytes | str, bytes | str]) -> dict[str, str]:
    def text(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    return {text(k): text(v) for k, v in sorted(mapping.items(), key=lambda kv: text(kv[0]))}
