"""Bad input on every family: a dead letter with a reason, the offset moves on, nothing counts."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from tests.integration.conftest import eventually, isolated_run, stored_count
from tests.integration.load import write_report

pytestmark = pytest.mark.integration
SID = "550e8400-e29b-41d4-a716-446655440000"


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "occurred_at": "2025-01-30T10:30:00Z",
        "user_id": "bad-user",
        "session_id": SID,
    }
    if kind.startswith("ai."):
        base |= {"prompt": "p", "response": "r", "provider": "g", "model": "m", "latency_ms": 5}
    if kind == "ai.failed":
        base |= {"error": "x"}
    if kind.startswith("voice."):
        base |= {"speaker_id": 1, "text": "t", "audio": "UklGRg==", "latency_ms": 5}
    if kind == "voice.failed":
        base |= {"error": "x"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


CASES: list[tuple[str, str, object]] = [
    # (topic suffix, expected reason, payload: dict → JSON, bytes → as is)
    ("inference-events", "invalid_json", b'{"type": "ai.response", '),
    ("inference-events", "invalid_fields", ev("ai.response", latency_ms="fast")),
    ("inference-events", "invalid_fields", ev("ai.response", prompt=None)),
    ("inference-events", "unknown_type", ev("ai.guessed")),
    ("inference-events", "invalid_fields", ev("ai.failed", user_id="a:b")),
    ("inference-events", "invalid_fields", ev("ai.failed", user_id="{x}")),
    ("inference-events", "invalid_fields", ev("ai.failed", user_id="a b")),
    ("inference-events", "invalid_fields", ev("ai.failed", user_id="u" * 500)),
    ("inference-events", "invalid_fields", ev("ai.failed", session_id="s:1")),
    ("inference-events", "invalid_fields", ev("ai.response", occurred_at="2025-01-30 10:30:00")),
    ("inference-events", "too_large", ev("ai.response", response="x" * 1_100_000)),
    ("inference-events", "wrong_topic", ev("voice.failed")),
    ("synthesis-events", "invalid_json", b"\xff\xfe not utf-8"),
    ("synthesis-events", "invalid_fields", ev("voice.synthesized", audio="***")),
    ("synthesis-events", "invalid_fields", ev("voice.synthesized", audio="")),  # an empty miss
    ("synthesis-events", "invalid_fields", ev("voice.synthesized", speaker_id=-3)),
    ("synthesis-events", "invalid_fields", ev("voice.failed", text=None)),
    ("synthesis-events", "invalid_fields", ev("voice.synthesized", event_id="not-a-uuid")),
    ("synthesis-events", "not_an_object", b'"just a string"'),
    ("session-events", "invalid_fields", ev("session.started", speaker_id=None)),
    ("session-events", "invalid_fields", ev("user.login", occurred_at="yesterday")),
    # U+0000 in the id: its dead letter must still go into PostgreSQL's text columns
    ("session-events", "invalid_fields", ev("user.login", event_id="\x00abc")),
    ("inference-events", "unknown_type", ev("ai.guessed", event_id="\x00" * 5_000)),
]

BIG_KEY = b"\x01" * 900_000
"""A key whose dead letter, the key carried whole (and JSON-escaped, 6 bytes a byte),
was more than the broker takes: refused on every flush, and the outbox timer crashed."""


async def test_bad_input_on_every_family(test_env: dict[str, str]) -> None:
    async with isolated_run(test_env, "badinput", 10) as run:
        prefix, pub = run.settings.topic_prefix, run.publisher
        key = b"bad-user"
        for suffix, _, payload in CASES:
            raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
            await pub.publish_raw(prefix + suffix, key, raw)
        await pub.publish_raw(prefix + "session-events", BIG_KEY, b"{not json")
        # Valid, but keyed by someone else: accepted, counted and named in a warning.
        misrouted = ev("user.login", user_id="keyed-user", session_id=None)
        await pub.publish_raw(prefix + "session-events", b"someone-else", orjson.dumps(misrouted))
        # A duplicate event_id with other content: the first wins, the second is a conflict.
        dup = str(uuid.uuid4())
        first = await pub.ai_response(
            "bad-user",
            SID,
            prompt="p",
            response="first",
            provider="g",
            model="m",
            latency_ms=1,
            event_id=dup,
        )
        await pub.ai_response(
            "bad-user",
            SID,
            prompt="p",
            response="second",
            provider="g",
            model="m",
            latency_ms=1,
            event_id=dup,
        )
        # The next good event of each family still lands (the offsets moved on).
        good = [
            await pub.session_started("good-user", speaker_id=1),  # returns the session_id
            await pub.voice_failed(
                "good-user", SID, speaker_id=1, text="t", error="x", latency_ms=1
            ),
            await pub.ai_failed("good-user", SID, provider="g", model="m", error="x", latency_ms=1),
        ]
        await eventually(lambda: stored_count(run.pool, [first]), lambda n: n == 1)

        rows = await eventually(
            lambda: run.pool.fetch(
                "SELECT topic, reason, detail FROM dead_letters WHERE message_key = $1 ORDER BY id",
                key,
            ),
            lambda r: len(r) == len(CASES) + 1,
        )
        by_topic: dict[str, list[str]] = {}
        for row in rows:
            by_topic.setdefault(row["topic"].removeprefix(prefix), []).append(row["reason"])
        for suffix in ("inference-events", "synthesis-events", "session-events"):
            want = [reason for s, reason, _ in CASES if s == suffix]
            if suffix == "inference-events":
                want.append("duplicate_event_conflict")
            assert by_topic[suffix] == want
        assert all(r["detail"] for r in rows)
        big = await eventually(
            lambda: run.pool.fetchrow(
                "SELECT reason, length(message_key) AS n FROM dead_letters"
                " WHERE topic = $1 AND message_key <> $2",
                prefix + "session-events",
                key,
            ),
            lambda r: r is not None,
        )
        assert (big["reason"], big["n"]) == ("invalid_json", len(BIG_KEY))  # kept whole
        # Every dead letter reached the topic: none is refused, none waits behind one.
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT count(*) FROM dead_letters WHERE published_at IS NULL"
            ),
            lambda n: n == 0,
        )
        stored = await run.pool.fetchval(
            "SELECT payload FROM events WHERE event_id = $1", uuid.UUID(dup)
        )
        assert orjson.loads(stored)["response"] == "first"
        await eventually(
            lambda: run.pool.fetchval("SELECT count(*) FROM events WHERE user_id = 'good-user'"),
            lambda n: n == 3,
        )

        await eventually(lambda: stored_count(run.pool, [misrouted["event_id"]]), lambda n: n == 1)
        assert "keyed other than by their user_id" in run.worker.log_text()

        # No counter moved for the bad input: only the good events and the first duplicate.
        counters = dict(
            await run.pool.fetch(
                "SELECT name, sum(value)::bigint FROM daily_counters GROUP BY name"
            )
        )
        assert {k: v for k, v in counters.items() if not k.endswith("_us")} == {
            "sessions_started": 1,
            "ai_misses": 1,
            "ai_failed": 1,
            "voice_failed": 1,
        }
        assert await run.redis.exists("user:a:b:state", "user:{x}:state") == 0
        assert run.worker.proc is not None and run.worker.proc.poll() is None  # no crash loop
        assert run.worker.log_text().count("[^Worker]: Ready") == 1

        write_report(
            "7. bad input, all families",
            {
                "produced": len(CASES) + 2 + len(good),
                "dead_lettered": len(rows),
                "stored": 1 + len(good),
                "lost": 0,
                "duplicated": 0,
                "recover_s": 0,
            },
        )
