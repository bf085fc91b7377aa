"""Steady load across all three topic families, with a ground-truth model.

`Load` publishes at a fixed rate for users u0..uN: sessions that start, act
and end, AI responses (hits and misses), voice clips, failures. Only events
the broker acknowledged count as produced (a send that failed while Kafka was
down is not in the model). `verify` then checks the worker's result against
the model: PostgreSQL holds exactly the produced event_ids, every counter
equals the model, every Redis key equals what PostgreSQL implies and has a TTL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from schemas.events import (
    AiFailed,
    AiResponse,
    Event,
    SessionActivity,
    SessionEnded,
    SessionStarted,
    UserLogin,
    VoiceFailed,
    VoiceSynthesized,
)
from streams.model import (
    AI_FAILED,
    AI_HITS,
    AI_MISSES,
    SESSIONS_STARTED,
    VOICE_FAILED,
    VOICE_HITS,
    VOICE_MISSES,
)
from streams.projections import Delete, HashWrite, SortedSetAdd, StringWrite
from streams.publisher import EventPublisher
from streams.read.recompute import KEY_KINDS, kind_chunks
from streams.redis_targets import RedisTargets, as_targets
from streams.settings import Settings

AUDIO = base64.b64encode(b"RIFF" + bytes(range(256)) * 8).decode()


@dataclass
class Model:
    produced: list[str] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)
    user_sessions: Counter[str] = field(default_factory=Counter)
    failed_sends: int = 0
    unstarted: set[str] = field(default_factory=set)
    """Sessions whose session.started the broker never took (Kafka was down): their
    later events are rightly dead-lettered as unknown_session."""


@dataclass
class Load:
    publisher: EventPublisher
    users: int = 40
    rate: float = 200.0
    seed: int = 1
    model: Model = field(default_factory=Model)
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    _sessions: dict[str, str] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    def day(self) -> date:
        return datetime.now(UTC).date()

    def next_events(self, rng: random.Random) -> list[Event]:
        user = f"load-{self.run}-{rng.randrange(self.users)}"
        now = datetime.now(UTC)
        common: dict[str, Any] = {"occurred_at": now, "user_id": user}
        sid = self._sessions.get(user)
        if sid is None:
            sid = str(uuid.uuid4())
            self._sessions[user] = sid
            return [
                UserLogin(event_id=str(uuid.uuid4()), **common, preferences={"n": 1}),
                SessionStarted(
                    event_id=str(uuid.uuid4()),
                    **common,
                    session_id=sid,
                    speaker_id=rng.randrange(4),
                ),
            ]
        roll = rng.random()
        eid = str(uuid.uuid4())
        scoped = {**common, "event_id": eid, "session_id": sid}
        if roll < 0.05:
            del self._sessions[user]
            return [SessionEnded(**scoped, reason="done")]
        if roll < 0.35:
            return [SessionActivity(**scoped, performance_stats={"r": rng.randrange(100)})]
        if roll < 0.70:
            return [
                AiResponse(
                    **scoped,
                    prompt=f"p{rng.randrange(30)}",
                    response="ok",
                    provider="g",
                    model="m",
                    latency_ms=rng.randrange(5, 900),
                    cache_hit=rng.random() < 0.8,
                )
            ]
        if roll < 0.95:
            hit = rng.random() < 0.7
            return [
                VoiceSynthesized(
                    **scoped,
                    speaker_id=1,
                    text=f"t{rng.randrange(30)}",
                    audio="" if hit else AUDIO,
                    latency_ms=rng.randrange(5, 500),
                    cache_hit=hit,
                )
            ]
        if roll < 0.975:
            return [AiFailed(**scoped, provider="g", model="m", error="x", latency_ms=1)]
        return [VoiceFailed(**scoped, speaker_id=1, text="t", error="x", latency_ms=1)]

    async def run_for(self, seconds: float) -> None:
        """Publish at `rate` events/s for `seconds` (or until `stop()`)."""
        rng = random.Random(self.seed)
        start = time.monotonic()
        sent = 0
        while not self._stop.is_set() and time.monotonic() - start < seconds:
            for event in self.next_events(rng):
                task = asyncio.create_task(self._send(event))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
                sent += 1
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    async def _send(self, event: Event) -> None:
        try:
            await self.publisher.publish(event)
        except Exception:  # the broker never acknowledged it: not produced
            self.model.failed_sends += 1
            if isinstance(event, SessionStarted):
                self.model.unstarted.add(event.session_id)
            return
        self._account(event)

    def _account(self, e: Event) -> None:
        m = self.model
        m.produced.append(e.event_id)
        if isinstance(e, SessionStarted):
            m.counters[SESSIONS_STARTED] += 1
            m.user_sessions[e.user_id] += 1
        elif isinstance(e, AiResponse):
            m.counters[AI_HITS if e.cache_hit else AI_MISSES] += 1
        elif isinstance(e, VoiceSynthesized):
            m.counters[VOICE_HITS if e.cache_hit else VOICE_MISSES] += 1
        elif isinstance(e, AiFailed):
            m.counters[AI_FAILED] += 1
        elif isinstance(e, VoiceFailed):
            m.counters[VOICE_FAILED] += 1


async def wait_all_stored(pool: asyncpg.Pool, model: Model, timeout_s: float) -> float:
    """Seconds until PostgreSQL holds every produced event."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        n = await pool.fetchval(
            "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", model.produced
        )
        if n == len(model.produced):
            return time.monotonic() - start
        await asyncio.sleep(0.25)
    raise AssertionError(f"only {n} of {len(model.produced)} events stored after {timeout_s}s")


async def verify(
    pool: asyncpg.Pool, redis: Redis | RedisTargets, settings: Settings, model: Model
) -> dict[str, int]:
    """Assert the worker's result equals the model; return the figures for the report."""
    stored = await pool.fetchval("SELECT count(*) FROM events")
    assert stored == len(model.produced), "PostgreSQL holds other events than produced"
    rows = await pool.fetch(
        "SELECT name, sum(value)::bigint AS v FROM daily_counters GROUP BY name"
    )
    counters = {r["name"]: r["v"] for r in rows if not r["name"].endswith("_us")}
    assert counters == {k: v for k, v in model.counters.items() if v}, "counters drifted"
    per_user = await pool.fetch(
        "SELECT user_id, sum(started)::int AS n FROM user_daily_sessions GROUP BY user_id"
    )
    assert {r["user_id"]: r["n"] for r in per_user} == dict(model.user_sessions)
    dead = await pool.fetch(
        "SELECT d.reason, e.session_id::text AS session_id FROM dead_letters d"
        " LEFT JOIN events e ON e.event_id::text = d.event_id"
    )
    wrongly = [
        (r["reason"], r["session_id"])
        for r in dead
        if r["reason"] != "unknown_session" or r["session_id"] not in model.unstarted
    ]
    assert wrongly == [], f"valid events were dead-lettered: {wrongly[:5]}"
    await assert_redis_matches_postgres(pool, redis, settings)
    return {"produced": len(model.produced), "stored": int(stored), "lost": 0, "duplicated": 0}


async def assert_redis_matches_postgres(
    pool: asyncpg.Pool, redis: Redis | RedisTargets, settings: Settings
) -> None:
    """Every key PostgreSQL implies is in Redis with that value, and every key has a TTL.

    With `RedisTargets`, each key is looked for on its family's master (SPEC §8), at
    the key stored there (`RedisTargets.key`: a cluster's design layout tags it)."""
    targets = as_targets(redis)
    now = datetime.now(UTC)
    wrong: list[str] = []
    for kind in KEY_KINDS:
        async for chunk in kind_chunks(pool, settings, kind, None, now):
            for op in chunk.ops:
                client, key = targets.master_for(op.key), targets.key(op.key)
                if isinstance(op, HashWrite):
                    got = await client.hgetall(key)
                    if kind == "stats":  # gauges of now may move between two reads
                        got = {
                            k: v
                            for k, v in got.items()
                            if k not in ("active_sessions", "system_load")
                        }
                        want = {
                            k: v
                            for k, v in op.fields.items()
                            if k not in ("active_sessions", "system_load")
                        }
                    else:
                        want = op.fields
                    if got != want:
                        wrong.append(f"{op.key}: {got} != {want}")
                elif isinstance(op, StringWrite):
                    if await client.get(key) != op.value:
                        wrong.append(f"{op.key}: value differs")
                elif isinstance(op, SortedSetAdd):
                    members = set(await client.zrange(key, 0, -1))
                    missing = set(op.members) - members
                    if missing:
                        wrong.append(f"{op.key}: {len(missing)} members missing")
                elif isinstance(op, Delete):
                    pass
    assert not wrong, "\n".join(wrong[:20])
    no_ttl = [
        k
        for _, client in targets.distinct()
        async for k in client.scan_iter(count=1000)
        if await client.ttl(k) == -1
    ]
    assert no_ttl == [], f"keys without TTL: {no_ttl[:10]}"


REPORT = Path(".cache/chaos-report.json")


def write_report(name: str, figures: dict[str, Any]) -> None:
    """Add one scenario's figures to the report the README table is made from."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[name] = figures
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True))
