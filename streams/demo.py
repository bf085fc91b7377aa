"""`rpcache demo`: simulated roleplay traffic through the whole pipeline.

Starts a worker in a child process, publishes a day of traffic for a few
dozen users with `EventPublisher` (plus a few malformed messages), waits until
PostgreSQL holds every event, then prints what landed in PostgreSQL, Redis and
the dead-letter table, and stops the worker.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import asyncpg
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from schemas.keys import (
    SESSION_TOPIC,
    session_key,
    stats_key,
    topic_name,
    user_state_key,
)
from streams.publisher import EventPublisher
from streams.reducers.sessions import business_day
from streams.runtime import open_pool, open_redis
from streams.settings import Settings, get_settings
from streams.topics import ensure_topics

console = Console()


@dataclass
class Traffic:
    event_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    open_sessions: list[str] = field(default_factory=list)
    ended_sessions: list[str] = field(default_factory=list)
    bad_messages: int = 0


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


async def publish_traffic(
    publisher: EventPublisher, run: str, users: int, sessions_per_user: int, events: int
) -> Traffic:
    traffic = Traffic()
    rng = random.Random(7)

    async def one_user(n: int) -> None:
        user = f"demo-{run}-user{n:03d}"
        traffic.users.append(user)
        traffic.event_ids.append(await publisher.user_login(user, preferences={"lang": "ja"}))
        for s in range(sessions_per_user):
            sid = await publisher.session_started(
                user,
                speaker_id=rng.randrange(0, 12),
                scenario_id=f"scenario-{s % 4}",
                conversation_context={"scene": "cafe", "turn": 0},
            )
            for turn in range(events):
                if turn % 3 == 2:
                    eid = await publisher.session_updated(
                        user, sid, conversation_context={"scene": "cafe", "turn": turn}
                    )
                else:
                    eid = await publisher.session_activity(
                        user, sid, performance_stats={"latency_ms": rng.randrange(40, 400)}
                    )
                traffic.event_ids.append(eid)
            last = s == sessions_per_user - 1
            if last and n % 2 == 0:
                traffic.open_sessions.append(sid)  # half the users stay in a session
            else:
                traffic.event_ids.append(await publisher.session_ended(user, sid, reason="done"))
                traffic.ended_sessions.append(sid)

    await asyncio.gather(*(one_user(n) for n in range(users)))
    # A few malformed messages: they must land in dead letters, not crash anything.
    topic = topic_name(publisher.topic_prefix, SESSION_TOPIC)
    for bad in (b"{not json", b'{"type": "session.started"}', b'{"type": "party.time"}'):
        await publisher.publish_raw(topic, b"demo", bad)
        traffic.bad_messages += 1
    return traffic


async def wait_stored(
    pool: asyncpg.Pool, ids: list[str], timeout_s: float, worker: subprocess.Popen[bytes]
) -> int:
    deadline = time.monotonic() + timeout_s
    stored = 0
    while time.monotonic() < deadline and worker.poll() is None:
        stored = await pool.fetchval(
            "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", ids
        )
        if stored == len(ids):
            return int(stored)
        await asyncio.sleep(0.25)
    return int(stored)


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
            traffic = await publish_traffic(publisher, run, users, sessions_per_user, events)
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


async def summarise(
    settings: Settings,
    pool: asyncpg.Pool,
    redis: Redis,
    traffic: Traffic,
    stored: int,
    published_s: float,
    landed_s: float,
) -> bool:
    today: date = business_day(datetime.now(settings.tz), settings.tz)
    open_in_redis = sum([await redis.exists(session_key(s)) for s in traffic.open_sessions])
    ended_in_redis = sum([await redis.exists(session_key(s)) for s in traffic.ended_sessions])
    user_keys = sum([await redis.exists(user_state_key(u)) for u in traffic.users])
    sample_user = await redis.hgetall(user_state_key(traffic.users[0]))
    stats = await redis.hgetall(stats_key(today))
    dead = await pool.fetchval(
        "SELECT count(*) FROM dead_letters WHERE message_key = 'demo'::bytea"
    )
    table = Table(title="What landed where")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    rows = [
        ("events published", len(traffic.event_ids), len(traffic.event_ids)),
        ("events stored in PostgreSQL", stored, len(traffic.event_ids)),
        ("open sessions with session:{id} in Redis", open_in_redis, len(traffic.open_sessions)),
        ("ended sessions still in Redis", ended_in_redis, 0),
        ("user:{id}:state keys", user_keys, len(traffic.users)),
        ("malformed messages dead-lettered (all runs)", dead, f">= {traffic.bad_messages}"),
    ]
    ok = stored == len(traffic.event_ids) and open_in_redis == len(traffic.open_sessions)
    ok = ok and ended_in_redis == 0 and user_keys == len(traffic.users)
    for name, value, expected in rows:
        table.add_row(name, str(value), str(expected))
    console.print(table)
    console.print(f"{stats_key(today)} = {_decode(stats)}")
    console.print(f"{user_state_key(traffic.users[0])} = {_decode(sample_user)}")
    rate = len(traffic.event_ids) / landed_s if landed_s else 0.0
    console.print(
        f"published in {published_s:.1f} s; all stored and projected after {landed_s:.1f} s"
        f" ({rate:.0f} events/s end to end, publisher awaiting each ack)"
    )
    console.print("[green]demo OK[/]" if ok else "[red]demo FAILED: see the table above[/]")
    return ok


def _decode(mapping: dict[bytes | str, bytes | str]) -> dict[str, str]:
    def text(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    return {text(k): text(v) for k, v in sorted(mapping.items(), key=lambda kv: text(kv[0]))}
