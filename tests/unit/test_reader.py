"""CacheReader without servers: the breaker state machine, result conversion, routing.

Routing tests use in-memory stand-ins for Redis and the PostgreSQL pool and a
hand-driven clock, so every transition is exact and nothing sleeps for real
except the one read that must run out of its (small) budget.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis.exceptions as redis_errors

from schemas import H
from schemas.keys import ai_response_key_for_hash, session_key
from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite
from streams.read import reader as reader_mod
from streams.read.reader import (
    BreakerState,
    CacheReader,
    CacheUnavailableError,
    CircuitBreaker,
    ReadResult,
    hash_value,
    json_object,
    string_value,
)
from streams.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the breaker -------------------------------------------------------------------
def test_breaker_opens_after_fail_max_consecutive_failures() -> None:
    b = CircuitBreaker(fail_max=3, reset_s=5, clock=Clock())
    for _ in range(2):
        p = b.acquire()
        assert p is not None and not p.probe
        b.failure(p)
    assert (b.state, b.failures) == (BreakerState.CLOSED, 2)
    p = b.acquire()
    assert p is not None
    b.success(p)  # a success in between resets the count: failures must be consecutive
    assert b.failures == 0
    for _ in range(3):
        p = b.acquire()
        assert p is not None
        b.failure(p)
    assert b.state is BreakerState.OPEN
    assert b.opens == 1
    assert b.acquire() is None


def test_breaker_half_open_lets_exactly_one_probe_through() -> None:
    clock = Clock()
    b = CircuitBreaker(fail_max=1, reset_s=5, clock=clock)
    p = b.acquire()
    assert p is not None
    b.failure(p)
    clock.now += 4.9
    assert b.acquire() is None
    clock.now += 0.1
    probe = b.acquire()
    assert probe is not None and probe.probe
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is None  # concurrent reads skip Redis while the probe runs
    b.success(probe)
    assert b.state is BreakerState.CLOSED
    nxt = b.acquire()
    assert nxt is not None and not nxt.probe


def test_breaker_failed_probe_reopens_for_a_full_period() -> None:
    clock = Clock()
    b = CircuitBreaker(fail_max=1, reset_s=5, clock=clock)
    p = b.acquire()
    assert p is not None
    b.failure(p)
    clock.now += 5
    probe = b.acquire()
    assert probe is not None
    clock.now += 1
    b.failure(probe)
    assert (b.state, b.opens) == (BreakerState.OPEN, 2)
    clock.now += 4.9
    assert b.acquire() is None
    clock.now += 0.1
    assert b.acquire() is not None


def test_breaker_released_probe_frees_the_slot() -> None:
    clock = Clock()
    b = CircuitBreaker(fail_max=1, reset_s=1, clock=clock)
    p = b.acquire()
    assert p is not None
    b.failure(p)
    clock.now += 1
    probe = b.acquire()
    assert probe is not None
    b.release(probe)  # cancelled: no verdict
    assert b.state is BreakerState.HALF_OPEN
    again = b.acquire()
    assert again is not None and again.probe


def test_breaker_ignores_late_outcomes_of_calls_started_before_it_opened() -> None:
    clock = Clock()
    b = CircuitBreaker(fail_max=2, reset_s=5, clock=clock)
    early = [b.acquire() for _ in range(4)]
    assert all(p is not None for p in early)
    b.failure(early[0])  # type: ignore[arg-type]
    b.failure(early[1])  # type: ignore[arg-type]
    assert b.state is BreakerState.OPEN
    b.failure(early[2])  # type: ignore[arg-type]
    b.success(early[3])  # type: ignore[arg-type]
    assert (b.state, b.opens) == (BreakerState.OPEN, 1)
    clock.now += 5
    probe = b.acquire()
    assert probe is not None
    b.success(early[3])  # type: ignore[arg-type]  # stale, not the probe
    assert b.state is BreakerState.HALF_OPEN


def test_breaker_rejects_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(fail_max=0, reset_s=1)
    with pytest.raises(ValueError):
        CircuitBreaker(fail_max=1, reset_s=0)


# --- results ---------------------------------------------------------------------------
def test_values_of_recomputed_ops() -> None:
    assert hash_value(HashWrite("k", {"a": "1"}, 5)) == {"a": "1"}
    assert hash_value(Delete("k")) is None
    assert string_value(StringWrite("k", "v", 5)) == "v"
    assert string_value(Delete("k")) is None
    with pytest.raises(TypeError):
        hash_value(StringWrite("k", "v", 5))
    with pytest.raises(TypeError):
        string_value(SortedSetAdd("k", {}, 0, 1))


def test_result_map_and_json() -> None:
    r: ReadResult[str] = ReadResult('{"response": "やあ"}', "redis")
    assert r.map(json_object) == ReadResult({"response": "やあ"}, "redis")
    miss: ReadResult[str] = ReadResult(None, "miss")
    assert miss.map(json_object) == ReadResult(None, "miss")
    with pytest.raises(ValueError):
        json_object("[1]")


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

    async def _behave(self) -> None:
        self.calls += 1
        if self.mode == "hang":
            await asyncio.sleep(30)
        elif self.mode == "down":
            raise redis_errors.ConnectionError("Connection refused")
        elif self.mode == "wrongtype":
            raise redis_errors.ResponseError("WRONGTYPE")

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

    monkeypatch.setattr(reader_mod.recompute, "session_op", session_op)
    monkeypatch.setattr(reader_mod.recompute, "ai_response_op", ai_response_op)
    return state


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, list[RedisOp]]]:
    log: list[tuple[object, list[RedisOp]]] = []

    async def write(redis: object, ops: Sequence[RedisOp]) -> None:
        log.append((redis, list(ops)))

    monkeypatch.setattr(reader_mod.redis_sink, "write", write)
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
    assert redis.calls == 0
