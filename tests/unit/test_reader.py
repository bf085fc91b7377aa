"""CacheReader without servers: routing, breakers per target, replicas, what is Redis's fault.

Uses in-memory stand-ins for Redis and the PostgreSQL pool and a hand-driven
clock, so every transition is exact and nothing sleeps for real except the
reads that must run out of their (small) budget, and the ones that show that
time spent in this process (its queue, a late event loop) is not counted
against Redis. The parts alone: test_breaker.py, test_read_budget.py,
test_read_results.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis.exceptions as redis_errors

from schemas import H
from schemas.keys import ai_response_key_for_hash, session_key, voice_key
from streams.projections import Delete, HashWrite, RedisOp, StringWrite
from streams.read import budget, recompute
from streams.read import reader as reader_mod
from streams.read.breaker import BreakerState
from streams.read.fallback import CacheUnavailableError
from streams.read.reader import CacheReader
from streams.read.results import ReadResult
from streams.read.routes import REPLICA_READ_FAMILIES, ReadTarget
from streams.settings import Settings
from streams.sinks import redis as redis_sink
from tests.unit.test_breaker import Clock


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.read_timeout_ms, s.breaker_fail_max, s.breaker_reset_s) == (50, 5, 5.0)
    monkeypatch.setenv("READ_TIMEOUT_MS", "120")
    monkeypatch.setenv("BREAKER_FAIL_MAX", "2")
    monkeypatch.setenv("BREAKER_RESET_S", "0.5")
    s = Settings()
    assert (s.read_timeout_ms, s.breaker_fail_max, s.breaker_reset_s) == (120, 2, 0.5)


# --- routing, with stand-ins ---------------------------------------------------------------
class FakeRedis:
    """Answers HGETALL/GET from a dict, or hangs, or fails, as told."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data = data or {}
        self.mode = "ok"
        self.calls = 0
        self.delay_s = 0.0

    async def _behave(self) -> None:
        self.calls += 1
        if self.mode == "hang":
            await asyncio.sleep(30)
        elif self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        elif self.mode == "down":
            raise redis_errors.ConnectionError("Connection refused")
        elif self.mode == "wrongtype":
            raise redis_errors.ResponseError("WRONGTYPE")
        elif self.mode == "masterdown":
            raise redis_errors.MasterDownError("Link with MASTER is down")

    async def hgetall(self, key: str) -> dict[str, str]:
        await self._behave()
        value = self.data.get(key, {})
        assert isinstance(value, dict)
        return value

    async def get(self, key: str) -> str | None:
        await self._behave()
        value = self.data.get(key)
        assert value is None or isinstance(value, str)
        return value

    async def aclose(self) -> None:
        pass


class FakePool:
    def __init__(self) -> None:
        self.acquired = 0
        self.down = False

    def acquire(self) -> FakePool:
        return self

    async def __aenter__(self) -> str:
        if self.down:
            raise OSError("Connection refused")
        self.acquired += 1
        return "conn"

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def close(self) -> None:
        pass


SID = str(uuid.UUID(int=7))
FIELDS = {"user_id": "u1", "status": "active", "speaker_id": "6"}


@pytest.fixture
def pg_state(monkeypatch: pytest.MonkeyPatch) -> dict[str, RedisOp]:
    """What the stand-in PostgreSQL recomputes for each key; records write-backs."""
    state: dict[str, RedisOp] = {}

    async def session_op(conn: object, session_id: str, now: datetime) -> RedisOp:
        return state.get(session_key(session_id), Delete(session_key(session_id)))

    async def ai_response_op(conn: object, prompt_hash: str, now: datetime) -> RedisOp:
        key = ai_response_key_for_hash(prompt_hash)
        return state.get(key, Delete(key))

    async def voice_op(conn: object, speaker_id: int, text_hash: str, now: datetime) -> RedisOp:
        key = f"voice:{speaker_id}:{text_hash}"
        return state.get(key, Delete(key))

    monkeypatch.setattr(recompute, "session_op", session_op)
    monkeypatch.setattr(recompute, "ai_response_op", ai_response_op)
    monkeypatch.setattr(recompute, "voice_op", voice_op)
    return state


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, list[RedisOp]]]:
    log: list[tuple[object, list[RedisOp]]] = []

    async def write(redis: object, ops: Sequence[RedisOp]) -> None:
        log.append((redis, list(ops)))

    monkeypatch.setattr(redis_sink, "write", write)
    return log


def make_reader(
    master: FakeRedis,
    replica: FakeRedis | None = None,
    pool: FakePool | None = None,
    clock: Clock | None = None,
) -> CacheReader:
    settings = Settings(read_timeout_ms=20, breaker_fail_max=2, breaker_reset_s=5)
    return CacheReader(
        settings,
        master=master,  # type: ignore[arg-type]
        replica=replica,  # type: ignore[arg-type]
        pool=pool or FakePool(),  # type: ignore[arg-type]
        clock=clock or Clock(),
    )


async def test_hit_is_served_by_redis_without_postgres(pg_state: dict[str, RedisOp]) -> None:
    pool = FakePool()
    reader = make_reader(FakeRedis({session_key(SID): FIELDS}), pool=pool)
    assert await reader.get_session(SID) == ReadResult(FIELDS, "redis")
    assert pool.acquired == 0
    assert (reader.stats.reads, reader.stats.hits) == (1, 1)


async def test_absent_key_reads_through_to_the_master_not_the_replica(
    pg_state: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    op = HashWrite(session_key(SID), FIELDS, 10**13)
    pg_state[session_key(SID)] = op
    master, replica = FakeRedis(), FakeRedis()
    reader = make_reader(master, replica)
    assert await reader.get_session(SID) == ReadResult(FIELDS, "postgres")
    assert (master.calls, replica.calls) == (0, 1)
    assert written == [(master, [op])]
    s = reader.stats
    assert (s.read_throughs, s.write_backs, s.fallbacks, s.misses) == (1, 1, 0, 0)


async def test_expired_or_unknown_entry_is_a_miss_and_not_written(
    pg_state: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    reader = make_reader(FakeRedis())
    assert await reader.get_ai_response("old prompt") == ReadResult(None, "miss")
    assert written == []
    assert reader.stats.misses == 1


async def test_ai_response_json_is_parsed_from_either_source(
    pg_state: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    key = ai_response_key_for_hash(H("p"))
    body = {"prompt_hash": H("p"), "response": "r"}
    pg_state[key] = StringWrite(key, orjson.dumps(body).decode(), 10**13)
    redis = FakeRedis()
    reader = make_reader(redis)
    assert await reader.get_ai_response("p") == ReadResult(body, "postgres")
    redis.data[key] = orjson.dumps(body).decode()
    assert await reader.get_ai_response("p") == ReadResult(body, "redis")


async def test_timeouts_fall_back_then_open_breaker_skips_redis(
    pg_state: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    pg_state[session_key(SID)] = HashWrite(session_key(SID), FIELDS, 10**13)
    clock = Clock()
    redis = FakeRedis({session_key(SID): FIELDS})
    redis.mode = "hang"
    reader = make_reader(redis, clock=clock)
    for _ in range(2):  # fail_max = 2, each pays the 20 ms budget
        assert await reader.get_session(SID) == ReadResult(FIELDS, "postgres")
    assert reader.breaker_state is BreakerState.OPEN
    for _ in range(5):
        assert await reader.get_session(SID) == ReadResult(FIELDS, "postgres")
    assert redis.calls == 2  # not asked at all while open
    assert written == []  # no write-back to a failing Redis
    s = reader.stats
    assert (s.reads, s.fallbacks, s.redis_errors, s.breaker_opens) == (7, 7, 2, 1)

    redis.mode = "ok"
    clock.now += 5
    assert await reader.get_session(SID) == ReadResult(FIELDS, "redis")  # the probe
    assert reader.breaker_state is BreakerState.CLOSED


async def test_concurrent_reads_in_half_open_send_one_probe(
    pg_state: dict[str, RedisOp],
) -> None:
    pg_state[session_key(SID)] = HashWrite(session_key(SID), FIELDS, 10**13)
    clock = Clock()
    redis = FakeRedis({session_key(SID): FIELDS})
    redis.mode = "down"
    reader = make_reader(redis, clock=clock)
    for _ in range(2):
        await reader.get_session(SID)
    assert reader.breaker_state is BreakerState.OPEN
    clock.now += 5
    redis.mode = "hang"  # still sick: the probe will time out
    results = await asyncio.gather(*(reader.get_session(SID) for _ in range(10)))
    assert all(r == ReadResult(FIELDS, "postgres") for r in results)
    assert redis.calls == 3  # two before opening, one probe
    assert reader.stats.breaker_opens == 2


async def test_server_error_falls_back_without_counting_against_breaker(
    pg_state: dict[str, RedisOp],
) -> None:
    pg_state[session_key(SID)] = HashWrite(session_key(SID), FIELDS, 10**13)
    redis = FakeRedis()
    redis.mode = "wrongtype"
    reader = make_reader(redis)
    for _ in range(3):
        assert await reader.get_session(SID) == ReadResult(FIELDS, "postgres")
    assert reader.breaker_state is BreakerState.CLOSED


async def test_both_down_raises_cache_unavailable(pg_state: dict[str, RedisOp]) -> None:
    redis = FakeRedis()
    redis.mode = "down"
    pool = FakePool()
    pool.down = True
    reader = make_reader(redis, pool=pool)
    with pytest.raises(CacheUnavailableError):
        await reader.get_session(SID)


async def test_ids_are_validated_before_any_io() -> None:
    redis = FakeRedis()
    reader = make_reader(redis)
    with pytest.raises(ValueError):
        await reader.get_session("not-a-uuid")
    with pytest.raises(ValueError):
        await reader.get_user_state("bad user:id")
    with pytest.raises(ValueError):
        await reader.get_user_state("u1\n")
    with pytest.raises(ValueError):
        await reader.get_voice(-1, "text")
    with pytest.raises(ValueError):
        await reader.get_voice(True, "text")
    with pytest.raises(ValueError, match=r"0\.\.2147483647"):  # not an outage of PostgreSQL
        await reader.get_voice(2**40, "text")
    assert redis.calls == 0


# --- a target per family, replicas, and what is Redis's fault --------------------------------
PROMPT, SPEAKER, TEXT = "p", 7, "t"
AI_KEY, VOICE_KEY = ai_response_key_for_hash(H(PROMPT)), voice_key(SPEAKER, TEXT)
AI_TEXT = orjson.dumps({"prompt_hash": H(PROMPT), "response": "r"}).decode()
AUDIO = "UklGRg=="


class Nodes:
    """A master per family, and a replica for sessions (a Sentinel target's layout)."""

    def __init__(self) -> None:
        self.sessions = FakeRedis({session_key(SID): FIELDS})
        self.replica = FakeRedis({session_key(SID): FIELDS})
        self.ai = FakeRedis({AI_KEY: AI_TEXT})
        self.voice = FakeRedis({VOICE_KEY: AUDIO})

    def reader(self, clock: Clock | None = None, **options: Any) -> CacheReader:
        settings = Settings(read_timeout_ms=20, breaker_fail_max=2, breaker_reset_s=5)
        targets = {
            "sessions": ReadTarget(
                "sessions",
                self.sessions,  # type: ignore[arg-type]
                self.replica,  # type: ignore[arg-type]
                REPLICA_READ_FAMILIES,
            ),
            "ai": ReadTarget("ai", self.ai),  # type: ignore[arg-type]
            "voice": ReadTarget("voice", self.voice),  # type: ignore[arg-type]
        }
        return CacheReader(
            settings,
            targets=targets,  # type: ignore[arg-type]
            pool=FakePool(),  # type: ignore[arg-type]
            clock=clock or Clock(),
            **options,
        )


@pytest.fixture
def everywhere(pg_state: dict[str, RedisOp]) -> dict[str, RedisOp]:
    """PostgreSQL holds the session, the AI response and the voice clip."""
    pg_state[session_key(SID)] = HashWrite(session_key(SID), FIELDS, 10**13)
    pg_state[AI_KEY] = StringWrite(AI_KEY, AI_TEXT, 10**13)
    pg_state[VOICE_KEY] = StringWrite(VOICE_KEY, AUDIO, 10**13)
    return pg_state


async def test_each_result_names_its_target_and_node(
    everywhere: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    nodes = Nodes()
    reader = nodes.reader()
    session = await reader.get_session(SID)
    ai = await reader.get_ai_response(PROMPT)
    voice = await reader.get_voice(SPEAKER, TEXT)
    assert [(r.source, r.target, r.node) for r in (session, ai, voice)] == [
        ("redis", "sessions", "replica"),  # state: a replica is safe
        ("redis", "ai", "master"),  # LRU/LFU caches: the master sees every read
        ("redis", "voice", "master"),
    ]
    assert ai.value == orjson.loads(AI_TEXT)
    assert (nodes.sessions.calls, nodes.replica.calls, nodes.ai.calls, nodes.voice.calls) == (
        0,
        1,
        1,
        1,
    )
    assert (reader.stats.hits, reader.stats.replica_hits) == (3, 1)
    # Equality is value and source, as before the fields existed.
    assert session == ReadResult(FIELDS, "redis")
    assert ReadResult("x", "redis", "ai", "master").map(str.upper) == ReadResult("X", "redis")
    assert ReadResult("x", "redis", "ai", "master").map(str.upper).node == "master"
    nodes.voice.data.clear()
    through = await reader.get_voice(SPEAKER, TEXT)
    assert (through.source, through.target, through.node) == ("postgres", "voice", None)
    assert written == [(nodes.voice, [everywhere[VOICE_KEY]])]  # to the family's master


async def test_one_breaker_per_target_a_dead_voice_master_leaves_the_others_on_redis(
    everywhere: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    clock = Clock()
    nodes = Nodes()
    nodes.voice.mode = "down"
    reader = nodes.reader(clock)
    for _ in range(5):
        assert (await reader.get_voice(SPEAKER, TEXT)) == ReadResult(AUDIO, "postgres")
        assert (await reader.get_session(SID)).source == "redis"
        assert (await reader.get_ai_response(PROMPT)).source == "redis"
    assert reader.breaker_for("voice").state is BreakerState.OPEN
    assert reader.breaker_for("ai").state is BreakerState.CLOSED
    assert reader.breaker_for("sessions").state is BreakerState.CLOSED
    assert nodes.voice.calls == 2  # fail_max, then skipped while open
    s = reader.stats
    assert (s.breaker_state, s.breaker_opens, s.fallbacks, s.redis_errors) == ("open", 1, 5, 2)
    assert s.breakers == {
        "sessions": "closed",
        "sessions/replica": "closed",
        "ai": "closed",
        "voice": "open",
    }
    assert written == []  # nothing written back to a target that is failing

    nodes.voice.mode = "ok"  # the failover is done
    clock.now += 5
    assert await reader.get_voice(SPEAKER, TEXT) == ReadResult(AUDIO, "redis")
    assert reader.breaker_state is BreakerState.CLOSED


async def test_families_sharing_a_target_share_its_breaker(pg_state: dict[str, RedisOp]) -> None:
    pg_state[session_key(SID)] = HashWrite(session_key(SID), FIELDS, 10**13)
    redis = FakeRedis()
    redis.mode = "down"
    reader = make_reader(redis)
    for _ in range(2):
        await reader.get_session(SID)
    assert reader.breaker_for("voice") is reader.breaker_for("sessions")
    assert reader.breaker_state is BreakerState.OPEN
    assert reader.target_name("ai") == "sessions+ai+voice"
    assert list(reader.stats.breakers) == ["sessions+ai+voice"]


async def test_a_failing_replica_sends_session_reads_to_the_master_then_is_skipped(
    everywhere: dict[str, RedisOp],
) -> None:
    clock = Clock()
    nodes = Nodes()
    nodes.replica.mode = "down"
    reader = nodes.reader(clock)
    for _ in range(4):
        got = await reader.get_session(SID)
        assert (got.source, got.node) == ("redis", "master")
    assert nodes.replica.calls == 2  # its own breaker opened after fail_max
    assert nodes.sessions.calls == 4
    s = reader.stats
    assert (s.replica_fallbacks, s.fallbacks, s.breaker_state) == (4, 0, "closed")
    assert s.breakers["sessions/replica"] == "open"
    nodes.replica.mode = "ok"
    clock.now += 5
    assert (await reader.get_session(SID)).node == "replica"
    assert reader.stats.breakers["sessions/replica"] == "closed"


async def test_a_replica_keeps_serving_sessions_while_the_master_is_down(
    everywhere: dict[str, RedisOp], written: list[tuple[object, list[RedisOp]]]
) -> None:
    nodes = Nodes()
    nodes.sessions.mode = "down"
    reader = nodes.reader()
    for _ in range(3):  # fail the master's breaker through a replica miss
        nodes.replica.data.clear()
        assert (await reader.get_session(SID)).source == "postgres"
    nodes.replica.data[session_key(SID)] = FIELDS
    got = await reader.get_session(SID)
    assert (got.source, got.node) == ("redis", "replica")
    # The read-throughs' write-backs went to the sessions master (which refused them,
    # in a real Redis; the stand-in sink records them).
    assert {id(client) for client, _ in written} == {id(nodes.sessions)}


async def test_an_error_reply_that_says_the_node_cannot_serve_counts_for_its_breaker(
    everywhere: dict[str, RedisOp],
) -> None:
    nodes = Nodes()
    nodes.replica.mode = "masterdown"  # a replica cut off from its master, not serving
    reader = nodes.reader()
    for _ in range(3):
        assert (await reader.get_session(SID)).node == "master"
    assert reader.stats.breakers["sessions/replica"] == "open"
    # whereas an error about the request goes to PostgreSQL, breakers untouched
    nodes.ai.mode = "wrongtype"
    for _ in range(3):
        assert (await reader.get_ai_response(PROMPT)).source == "postgres"
    assert reader.breaker_for("ai").state is BreakerState.CLOSED


async def test_queueing_for_a_slot_is_not_a_redis_failure(everywhere: dict[str, RedisOp]) -> None:
    """Ten reads at once through one slot: the last waits ~9 answers (far past the
    20 ms budget), yet each round trip took 8 ms: every read is Redis's, none failed."""
    nodes = Nodes()
    nodes.ai.mode = "slow"
    nodes.ai.delay_s = 0.008
    reader = nodes.reader(max_in_flight=1)
    started = time.perf_counter()
    results = await asyncio.gather(*(reader.get_ai_response(PROMPT) for _ in range(10)))
    took = time.perf_counter() - started
    assert took > 0.07  # the queue: ten round trips one after the other
    assert [r.source for r in results] == ["redis"] * 10
    s = reader.stats
    assert (s.redis_errors, s.fallbacks, s.breaker_state) == (0, 0, "closed")
    assert s.queued == 9
    assert s.queue_wait_s > 0.2  # 8 + 16 + … + 72 ms in all


async def test_reads_queued_behind_an_opening_breaker_skip_redis(
    everywhere: dict[str, RedisOp],
) -> None:
    nodes = Nodes()
    nodes.voice.mode = "hang"
    reader = nodes.reader(max_in_flight=2)
    results = await asyncio.gather(*(reader.get_voice(SPEAKER, TEXT) for _ in range(8)))
    assert [r.source for r in results] == ["postgres"] * 8
    assert nodes.voice.calls == 2  # the two in flight timed out and opened it
    assert reader.stats.queued == 6


def _block_loop(seconds: float) -> None:
    time.sleep(seconds)  # a CPU-bound stretch of the service (or a GC pause)


async def test_a_budget_run_out_while_the_loop_was_late_is_not_a_redis_failure(
    everywhere: dict[str, RedisOp],
) -> None:
    """Redis answers in 5 ms, but the process holds the loop for 60 ms: the answer
    waits to be read, the 20 ms timer fires 40 ms late, and the read is Redis's."""
    nodes = Nodes()
    nodes.ai.mode = "slow"
    nodes.ai.delay_s = 0.005
    reader = nodes.reader()
    read = asyncio.create_task(reader.get_ai_response(PROMPT))
    await asyncio.sleep(0)  # the read is in flight
    _block_loop(0.06)
    result = await read
    assert result.source == "redis"
    s = reader.stats
    assert (s.loop_late, s.redis_errors, s.overloaded, s.fallbacks) == (1, 0, 0, 0)
    assert reader.breaker_for("ai").failures == 0


async def test_a_loop_late_past_the_grace_goes_to_postgres_without_charging_redis(
    everywhere: dict[str, RedisOp], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget, "OVERLOAD_GRACE_S", 0.05)
    nodes = Nodes()
    nodes.ai.mode = "hang"
    reader = nodes.reader()

    async def busy_process() -> None:
        for _ in range(25):  # 25 × 30 ms, each followed by one turn of the loop
            _block_loop(0.03)
            await asyncio.sleep(0)

    busy = asyncio.create_task(busy_process())
    for _ in range(3):  # fail_max is 2: none of them may count
        assert (await reader.get_ai_response(PROMPT)).source == "postgres"
    await busy
    s = reader.stats
    assert s.overloaded == 3 and s.loop_late == 3
    assert (s.redis_errors, s.breaker_state) == (0, "closed")
    assert reader.breaker_for("ai").failures == 0
    # The same hung Redis with a loop on time is Redis's fault.
    for _ in range(2):
        assert (await reader.get_ai_response(PROMPT)).source == "postgres"
    assert reader.breaker_for("ai").state is BreakerState.OPEN
    assert reader.stats.overloaded == 3


def test_reader_needs_a_target_for_every_family() -> None:
    settings = Settings()
    with pytest.raises(TypeError):
        CacheReader(settings)
    with pytest.raises(ValueError, match="voice"):
        CacheReader(settings, targets={"sessions": ReadTarget("s", FakeRedis())})  # type: ignore[arg-type]


def test_the_public_import_path_keeps_every_name_it_had() -> None:
    """What services, the bench, the tests and the docs imported from
    `streams.read.reader` before it was split into its parts is still there."""
    services = ["CacheReader", "CacheUnavailableError", "ReadResult", "ReaderStats"]
    monitoring_and_bench = ["BreakerState", "redis_client"]
    parts = ["CircuitBreaker", "ReadTarget", "REPLICA_READ_FAMILIES", "loop_tolerance_s"]
    values = ["hash_value", "string_value", "json_object"]
    assert {*services, *monitoring_and_bench, *parts, *values} <= set(reader_mod.__all__)
    assert all(getattr(reader_mod, name) is not None for name in reader_mod.__all__)
