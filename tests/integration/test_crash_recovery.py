"""kill -9 of the worker with a few thousand events in flight: nothing lost, nothing doubled."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from redis.asyncio import Redis

from schemas.events import SessionActivity, SessionEnded, SessionStarted, UserLogin
from schemas.keys import format_utc, session_key, stats_key, user_state_key
from streams.publisher import EventPublisher
from streams.settings import Settings
from tests.integration.conftest import WorkerProcess, eventually, stored_count

pytestmark = pytest.mark.integration

USERS = 250
ACTIVITIES = 8


@dataclass
class Model:
    """Ground truth: what the worker must end up with, from what we produced."""

    event_ids: list[str] = field(default_factory=list)
    sessions: dict[str, str] = field(default_factory=dict)  # user -> session
    last_activity: dict[str, datetime] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    events: list[object] = field(default_factory=list)


def build(run: str) -> Model:
    model = Model()
    base = datetime.now(UTC).replace(microsecond=0)
    for n in range(USERS):
        user = f"crash-{run}-{n}"
        sid = str(uuid.uuid4())
        model.sessions[user] = sid
        t = base + timedelta(milliseconds=n)

        def common(i: int, t: datetime = t, user: str = user) -> dict[str, object]:
            return {
                "event_id": str(uuid.uuid4()),
                "occurred_at": t + timedelta(seconds=i),
                "user_id": user,
            }

        evs: list[object] = [
            UserLogin(**common(0), preferences={"n": n}),
            SessionStarted(**common(1), session_id=sid, speaker_id=n % 10),
        ]
        evs += [
            SessionActivity(**common(2 + i), session_id=sid, performance_stats={"turn": i})
            for i in range(ACTIVITIES)
        ]
        model.last_activity[sid] = t + timedelta(seconds=1 + ACTIVITIES)
        if n % 2 == 0:
            evs.append(SessionEnded(**common(2 + ACTIVITIES), session_id=sid, reason="done"))
            model.ended.add(sid)
        model.events.extend(evs)
        model.event_ids.extend(e.event_id for e in evs)  # type: ignore[attr-defined]
    return model


async def publish(publisher: EventPublisher, events: list[object]) -> None:
    for e in events:
        await publisher.publish(e, wait=False)  # type: ignore[arg-type]
    await publisher.flush()


async def test_kill_9_mid_batch_loses_and_doubles_nothing(
    worker: WorkerProcess,
    publisher: EventPublisher,
    redis: Redis,
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    run = uuid.uuid4().hex[:6]
    model = build(run)
    day = datetime.now(settings.tz).date()
    before = int(
        await pool.fetchval(
            "SELECT coalesce(sum(value), 0) FROM daily_counters"
            " WHERE day = $1 AND name = 'sessions_started'",
            day,
        )
    )
    # Three contiguous slices keep each user's events in order; a kill after each.
    rng = random.Random(run)
    third = len(model.events) // 3
    chunks = [model.events[:third], model.events[third : 2 * third], model.events[2 * third :]]
    kills = 0
    for chunk in chunks:
        published = len(model.events) - sum(len(c) for c in chunks[chunks.index(chunk) + 1 :])
        await publish(publisher, chunk)
        target = published - rng.uniform(0.2, 0.8) * len(chunk)  # some still in flight
        await eventually(
            lambda: stored_count(pool, model.event_ids),
            lambda n, target=target: n >= target,  # type: ignore[misc]
            timeout_s=60,
        )
        worker.kill()
        kills += 1
        worker.start()
        await worker.wait_ready()
    assert kills == 3

    stored = await eventually(
        lambda: stored_count(pool, model.event_ids),
        lambda n: n == len(model.event_ids),
        timeout_s=120,
    )
    assert stored == len(model.event_ids)  # nothing lost (event_id is the primary key)

    users = list(model.sessions)
    counts = await pool.fetch(
        "SELECT user_id, started FROM user_daily_sessions WHERE user_id = ANY($1::text[])", users
    )
    assert {r["user_id"]: r["started"] for r in counts} == dict.fromkeys(users, 1)
    total = await pool.fetchval(
        "SELECT value FROM daily_counters WHERE day = $1 AND name = 'sessions_started'", day
    )
    assert total == before + USERS  # nothing counted twice

    async def redis_matches() -> list[str]:
        wrong: list[str] = []
        for user, sid in model.sessions.items():
            state = await redis.hgetall(user_state_key(user))  # type: ignore[misc]
            want_current = "" if sid in model.ended else sid
            if (
                state.get("daily_session_count") != "1"
                or state.get("current_session_id") != want_current
            ):
                wrong.append(f"{user}: {state}")
            hash_ = await redis.hgetall(session_key(sid))  # type: ignore[misc]
            if sid in model.ended:
                if hash_:
                    wrong.append(f"{sid} should be gone")
            elif (
                hash_.get("last_activity") != format_utc(model.last_activity[sid])
                or hash_.get("performance_stats") != f'{{"turn":{ACTIVITIES - 1}}}'
            ):
                wrong.append(f"{sid}: {hash_}")
        return wrong

    wrong = await eventually(redis_matches, lambda w: not w, timeout_s=30)
    assert wrong == []
    stats = await eventually(
        lambda: redis.hgetall(stats_key(day)),  # type: ignore[arg-type]
        lambda s: s.get("total_sessions_today") == str(total),
    )
    assert stats["total_sessions_today"] == str(total)
    dead = await pool.fetchval(
        "SELECT count(*) FROM dead_letters WHERE event_id = ANY($1::text[])", model.event_ids
    )
    assert dead == 0
