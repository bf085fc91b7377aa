"""Numbers and times that could poison state: bounded at validation, never overflowing.

The issue's inputs: a latency of 1.7e18 ms (nanoseconds sent as ms) and one of
9 223 372 036 854 774 ms that used to fill the day's bigint sum so that every
later ai.response of the day failed; a session.started 400 days ahead that
pinned the session and user keys for a year and took the quota day.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.events import MAX_LATENCY_MS
from schemas.hashing import H
from schemas.keys import ai_response_key, format_utc, session_key, stats_key, user_state_key
from tests.integration.conftest import eventually, isolated_run, stored_count

pytestmark = pytest.mark.integration


def _ai(user: str, sid: str, latency: float, prompt: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "type": "ai.response",
        "occurred_at": format_utc(datetime.now(UTC)),
        "user_id": user,
        "session_id": sid,
        "prompt": prompt,
        "response": f"answer to {prompt}",
        "provider": "groq",
        "model": "m",
        "latency_ms": latency,
    }


async def test_out_of_range_numbers_and_future_times(test_env: dict[str, str]) -> None:
    async with isolated_run(test_env, "bounds", 8) as run:
        pub, prefix, pool, redis = run.publisher, run.settings.topic_prefix, run.pool, run.redis
        user, sid = "bounds-user", str(uuid.uuid4())
        poison = [
            _ai(user, sid, 1.7e18, "ns as ms"),
            _ai(user, sid, 9223372036854774, "fills a bigint"),
        ]
        at_bound = [_ai(user, sid, MAX_LATENCY_MS, f"slow {i}") for i in range(3)]
        later = _ai(user, sid, 100, "an ordinary prompt")
        for e in [*poison, *at_bound, later]:
            await pub.publish_raw(f"{prefix}inference-events", user.encode(), orjson.dumps(e))

        # 400 days ahead, then two ordinary starts of the same user.
        ahead = datetime.now(UTC) + timedelta(days=400)
        future = {
            "event_id": str(uuid.uuid4()),
            "type": "session.started",
            "occurred_at": format_utc(ahead),
            "user_id": user,
            "session_id": str(uuid.uuid4()),
            "speaker_id": 1,
        }
        await pub.publish_raw(f"{prefix}session-events", user.encode(), orjson.dumps(future))
        s1 = await pub.session_started(user, speaker_id=1)
        await pub.session_ended(user, s1)
        # Within the clock-skew tolerance: accepted, but its TTL counts from now.
        s2 = await pub.session_started(
            user, speaker_id=1, occurred_at=datetime.now(UTC) + timedelta(minutes=4)
        )

        ids = [e["event_id"] for e in [*at_bound, later]]
        await eventually(lambda: stored_count(pool, ids), lambda n: n == len(ids))
        await eventually(
            lambda: redis.hget(user_state_key(user), "current_session_id"), lambda v: v == s2
        )
        reasons = await eventually(
            lambda: pool.fetch("SELECT event_id, reason, detail FROM dead_letters ORDER BY id"),
            lambda rows: len(rows) == 3,
        )
        by_id = {r["event_id"]: r for r in reasons}
        for e in poison:
            assert by_id[e["event_id"]]["reason"] == "out_of_range"
            assert "latency_ms" in by_id[e["event_id"]]["detail"]
        assert by_id[future["event_id"]]["reason"] == "occurred_in_future"

        # The later ordinary event was stored and cached: nothing poisoned the day.
        cached = orjson.loads(await redis.get(ai_response_key("an ordinary prompt")))
        assert cached["prompt_hash"] == H("an ordinary prompt")
        day = datetime.now(UTC).date()
        avg = await eventually(
            lambda: redis.hget(stats_key(day), "avg_response_time"), lambda v: v is not None
        )
        want = (3 * MAX_LATENCY_MS + 100) / 4
        assert abs(float(avg) - want) / want < 1e-5

        # The future start changed nothing: two sessions today, TTLs from now.
        state = await redis.hgetall(user_state_key(user))
        assert (state["daily_session_count"], state["remaining_sessions"]) == ("2", "48")
        assert 0 < await redis.ttl(user_state_key(user)) <= 3600
        assert 0 < await redis.ttl(session_key(s2)) <= 1800
        assert await redis.exists(session_key(future["session_id"])) == 0
