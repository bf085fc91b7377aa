"""`CacheReader`: the read library for roleplay services (SPEC §7).

Reads sessions, user state, AI responses and voice clips from Redis, and from
PostgreSQL, the source of truth, whenever Redis cannot answer in time. Every
result says which source served it, so a service can log and measure it.

    async with CacheReader.from_settings() as reader:
        hit = await reader.get_ai_response(prompt)
        if hit.value is not None:
            reply = hit.value["response"]  # hit.source: "redis" or "postgres"

One reader per process: it holds the Redis clients, a small PostgreSQL pool and
the circuit breaker, whose state only means something when it is shared.

How a read goes
---------------
1. Redis first (the replica when REDIS_REPLICA_URL is set), inside a budget of
   READ_TIMEOUT_MS applied with `asyncio.timeout`. The clients have socket
   timeouts of the same budget and no retries: a retry loop would spend the
   budget on a server that is already known to be failing.
2. Redis answered with the entry → source "redis".
3. Redis answered "absent" → PostgreSQL recomputes what the key should hold
   (`streams.read.recompute`, the worker's own projections). An entry still inside
   its TTL is returned (source "postgres") and written back to the master with
   its remaining TTL (read-through); a missing or expired entry is a miss
   everywhere (source "miss") and nothing is written.
4. Redis failed or timed out, or the breaker is open → PostgreSQL answers the
   same way, without a write-back (Redis is not healthy; the worker rebuilds).
   When PostgreSQL cannot answer either, `CacheUnavailableError` is raised: a miss
   would be a lie (a missing session is not an ended one).

The circuit breaker
-------------------
Written here instead of taken from a library, after evaluating the two asked for:

- pybreaker (1.4.1) supports asynchronous calls only through Tornado
  coroutines, holding a `threading.RLock` across the awaited call; native
  asyncio support exists only as an unmerged pull request.
- aiobreaker (1.2.0, last released 2021) is asyncio-native, but ships no type
  information (`mypy --strict` would see `Any` everywhere), measures the open
  period with the wall clock and mixes `datetime.utcnow()` with
  `datetime.now()` (its reported reopen time is wrong outside UTC, e.g. in
  Japan), and its half-open state lets every concurrent call through: with a
  server that still hangs, each of them would pay the full timeout, the very
  thing the breaker is there to prevent.

What is needed is small: a consecutive-failure count, an open period on the
monotonic clock, and exactly one probe in flight while half-open. It is
`CircuitBreaker` below, with pure unit tests (tests/unit/test_reader.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import asyncpg
import orjson
import redis.exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from schemas.events import USER_ID_PATTERN
from schemas.hashing import H
from schemas.keys import (
    ai_response_key_for_hash,
    session_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.database import pool_options
from streams.errors import RpcacheError
from streams.projections import Delete, HashWrite, RedisOp, StringWrite
from streams.read import recompute
from streams.security import redis_options
from streams.settings import Settings, get_settings
from streams.sinks import redis as redis_sink
from streams.store.postgres import Connection

log = logging.getLogger(__name__)

Source = Literal["redis", "postgres", "miss"]
V = TypeVar("V")
W = TypeVar("W")

POSTGRES_TIMEOUT_S = 5.0
"""Ceiling of one PostgreSQL fallback read: the last resort may be slow, not stuck."""

_REDIS_DOWN: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError (a restart loading data)
    redis_errors.TimeoutError,
    TimeoutError,  # asyncio.timeout's budget
    OSError,
)
"""Failures that say Redis is unreachable or too slow: they count for the breaker.

Any other `RedisError` is an answer from a live server (e.g. WRONGTYPE): that
read falls back to PostgreSQL, but the breaker counts it as a success.
"""

_WRITE_FAILED: tuple[type[BaseException], ...] = (redis_errors.RedisError, *_REDIS_DOWN)

_POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

_USER_ID = re.compile(USER_ID_PATTERN)


class CacheUnavailableError(RpcacheError):
    """Neither Redis nor PostgreSQL could answer the read."""

    retriable = True


# --- results ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReadResult(Generic[V]):
    """One read: the value (None for a miss) and the source that served it."""

    value: V | None
    source: Source

    def map(self, fn: Callable[[V], W]) -> ReadResult[W]:
        """The same result with `fn` applied to a present value."""
        return ReadResult(None if self.value is None else fn(self.value), self.source)


def hash_value(op: RedisOp) -> dict[str, str] | None:
    """What a hash key holds after `op` (None once deleted)."""
    if isinstance(op, HashWrite):
        return dict(op.fields)
    if isinstance(op, Delete):
        return None
    raise TypeError(f"not a hash projection: {op!r}")


def string_value(op: RedisOp) -> str | None:
    """What a string key holds after `op` (None once deleted)."""
    if isinstance(op, StringWrite):
        return op.value
    if isinstance(op, Delete):
        return None
    raise TypeError(f"not a string projection: {op!r}")


def json_object(text: str) -> dict[str, Any]:
    """The `ai_response:…` JSON text as the dict a service uses."""
    value = orjson.loads(text)
    if not isinstance(value, dict):
        raise ValueError("ai_response value is not a JSON object")
    return value


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode()


# --- circuit breaker ----------------------------------------------------------
class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to call Redis once; `probe` marks the one trial call of half-open."""

    probe: bool


class CircuitBreaker:
    """Closed → open after `fail_max` consecutive failures → half-open after `reset_s`.

    Not a wrapper around the call: the reader asks `acquire()` for a permit
    (None = skip Redis), makes the call itself under its own timeout, and
    reports the outcome with the permit. Only the probe's outcome moves a
    half-open breaker; outcomes of calls that started before the breaker
    opened are ignored once it is open, as they say nothing about now.
    Single-threaded by design (one event loop), so it needs no lock.
    """

    def __init__(
        self, fail_max: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if fail_max < 1 or reset_s <= 0:
            raise ValueError("fail_max must be ≥ 1 and reset_s > 0")
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.opens = 0
        """How many times the breaker has opened (a counter for monitoring)."""

    @property
    def state(self) -> BreakerState:
        """The state as of the last call; open turns half-open when a read asks."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    def acquire(self) -> Permit | None:
        """A permit to call Redis now, or None to go straight to the fallback."""
        if self._state is BreakerState.CLOSED:
            return Permit(probe=False)
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                return None
            self._state = BreakerState.HALF_OPEN
        if self._probing:
            return None  # one probe at a time: the others must not pay a timeout
        self._probing = True
        return Permit(probe=True)

    def success(self, permit: Permit) -> None:
        if permit.probe:
            self._probing = False
            self._state = BreakerState.CLOSED
            self._failures = 0
        elif self._state is BreakerState.CLOSED:
            self._failures = 0

    def failure(self, permit: Permit) -> None:
        if permit.probe:
            self._probing = False
            self._trip()
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.fail_max:
                self._trip()

    def release(self, permit: Permit) -> None:
        """The call ended without a verdict (cancelled): another read may probe."""
        if permit.probe:
            self._probing = False

    def _trip(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self.opens += 1


# --- statistics -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReaderStats:
    """Counters since the reader started; a snapshot, later exported to Prometheus.

    Every read counts once in `reads` and once in exactly one of `hits` (source
    "redis"), `misses` (source "miss") or the PostgreSQL-served reads
    (`reads - hits - misses`); `fallbacks` and `read_throughs` say why
    PostgreSQL was asked and overlap with `misses`.
    """

    reads: int = 0
    hits: int = 0
    """Served by Redis."""
    misses: int = 0
    """No live entry anywhere (absent, or its TTL has run out)."""
    fallbacks: int = 0
    """Answered by PostgreSQL because Redis failed, timed out or the breaker was open."""
    read_throughs: int = 0
    """Redis answered "absent" and PostgreSQL had a live entry."""
    write_backs: int = 0
    """Read-through entries written back to the Redis master."""
    write_back_errors: int = 0
    redis_errors: int = 0
    """Redis reads that failed or ran out of budget."""
    breaker_opens: int = 0
    breaker_state: BreakerState = BreakerState.CLOSED


@dataclass(slots=True)
class _Counters:
    reads: int = 0
    hits: int = 0
    misses: int = 0
    fallbacks: int = 0
    read_throughs: int = 0
    write_backs: int = 0
    write_back_errors: int = 0
    redis_errors: int = 0


# --- the reader -------------------------------------------------------------------
Recompute = Callable[[Connection, datetime], Awaitable[RedisOp]]
"""What PostgreSQL says the key should hold at `now` (a `streams.read.recompute` op)."""


def redis_client(url: str, timeout_s: float, tls: dict[str, Any] | None = None) -> Redis:
    """A client that fails fast: short socket timeouts, no retry loop.

    `tls`: `security.redis_options` for `url` (CA and client certificate of a
    `rediss://` URL); the ACL user and password travel in the URL.
    """
    return Redis.from_url(
        url,
        **(tls or {}),
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class CacheReader:
    """Sessions, user state, AI responses and voice clips; Redis first, PostgreSQL behind.

    Build it with `from_settings()` and use it as an async context manager (or
    call `start()` / `close()`). The reader owns the clients and pool it is
    given and closes them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        master: Redis,
        replica: Redis | None = None,
        pool: asyncpg.Pool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._master = master
        self._replica = replica
        self._pool = pool
        self._budget_s = settings.read_timeout_ms / 1000
        self._breaker = CircuitBreaker(settings.breaker_fail_max, settings.breaker_reset_s, clock)
        self._counts = _Counters()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> CacheReader:
        """A reader for REDIS_URL (and REDIS_REPLICA_URL) and DATABASE_URL."""
        settings = settings or get_settings()
        budget_s = settings.read_timeout_ms / 1000
        url = settings.redis_url.get_secret_value()
        master = redis_client(url, budget_s, redis_options(settings, url))
        replica = None
        if settings.redis_replica_url is not None:
            url = settings.redis_replica_url.get_secret_value()
            replica = redis_client(url, budget_s, redis_options(settings, url))
        return cls(settings, master=master, replica=replica)

    async def start(self) -> None:
        """Create the PostgreSQL pool; it connects on first use.

        With min_size 0 a service starts, and is served from Redis, while
        PostgreSQL is down. The schema is the worker's: the reader never migrates.
        """
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.settings.database_url.get_secret_value(),
                min_size=0,
                max_size=self.settings.pg_pool_size,
                command_timeout=POSTGRES_TIMEOUT_S,
                **pool_options(self.settings),
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._replica is not None:
            await self._replica.aclose()
        await self._master.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- statistics ---------------------------------------------------------------
    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    @property
    def stats(self) -> ReaderStats:
        c = self._counts
        return ReaderStats(
            reads=c.reads,
            hits=c.hits,
            misses=c.misses,
            fallbacks=c.fallbacks,
            read_throughs=c.read_throughs,
            write_backs=c.write_backs,
            write_back_errors=c.write_back_errors,
            redis_errors=c.redis_errors,
            breaker_opens=self._breaker.opens,
            breaker_state=self._breaker.state,
        )

    # --- the four reads -------------------------------------------------------------
    async def get_session(self, session_id: str) -> ReadResult[dict[str, str]]:
        """`session:{id}`: the hash while the session is open and not idle for 30 min."""
        sid = _session_id(session_id)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.session_op(conn, sid, now)

        return await self._read(session_key(sid), _fetch_hash, pg, hash_value)

    async def get_user_state(self, user_id: str) -> ReadResult[dict[str, str]]:
        """`user:{id}:state`: the hash for 1 h after the user's latest event."""
        uid = _user_id(user_id)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.user_op(conn, self.settings, uid, now)

        return await self._read(user_state_key(uid), _fetch_hash, pg, hash_value)

    async def get_ai_response(self, prompt: str) -> ReadResult[dict[str, Any]]:
        """`ai_response:{H(prompt)}`: the parsed JSON of the cached response."""
        prompt_hash = H(prompt)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.ai_response_op(conn, prompt_hash, now)

        key = ai_response_key_for_hash(prompt_hash)
        result = await self._read(key, _fetch_string, pg, string_value)
        return result.map(json_object)

    async def get_voice(self, speaker_id: int, text: str) -> ReadResult[str]:
        """`voice:{speaker_id}:{H(text)}`: the base64 audio of the cached clip."""
        speaker = _speaker_id(speaker_id)
        text_hash = H(text)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.voice_op(conn, speaker, text_hash, now)

        key = voice_key_for_hash(speaker, text_hash)
        return await self._read(key, _fetch_string, pg, string_value)

    # --- the read path ----------------------------------------------------------------
    async def _read(
        self,
        key: str,
        fetch: Callable[[Redis, str], Awaitable[V | None]],
        pg: Recompute,
        value_of: Callable[[RedisOp], V | None],
    ) -> ReadResult[V]:
        self._counts.reads += 1
        permit = self._breaker.acquire()
        if permit is None:
            return await self._fallback(pg, value_of)
        reader = self._replica or self._master
        before = self._breaker.state
        try:
            async with asyncio.timeout(self._budget_s):
                cached = await fetch(reader, key)
        except _REDIS_DOWN as exc:
            self._counts.redis_errors += 1
            self._breaker.failure(permit)
            self._log_transition(before, exc)
            return await self._fallback(pg, value_of)
        except redis_errors.RedisError as exc:
            self._counts.redis_errors += 1
            self._breaker.success(permit)
            self._log_transition(before, exc)
            log.warning("redis refused reading %s (%s); reading PostgreSQL", key, exc)
            return await self._fallback(pg, value_of)
        except BaseException:
            self._breaker.release(permit)
            raise
        self._breaker.success(permit)
        self._log_transition(before, None)
        if cached is not None:
            self._counts.hits += 1
            return ReadResult(cached, "redis")
        return await self._read_through(pg, value_of)

    async def _fallback(
        self, pg: Recompute, value_of: Callable[[RedisOp], V | None]
    ) -> ReadResult[V]:
        """Redis is not usable for this read: PostgreSQL answers, nothing is written back."""
        self._counts.fallbacks += 1
        value = value_of(await self._recompute(pg))
        if value is None:
            self._counts.misses += 1
            return ReadResult(None, "miss")
        return ReadResult(value, "postgres")

    async def _read_through(
        self, pg: Recompute, value_of: Callable[[RedisOp], V | None]
    ) -> ReadResult[V]:
        """Redis has no entry: take PostgreSQL's and put it back with its remaining TTL."""
        op = await self._recompute(pg)
        value = value_of(op)
        if value is None:
            self._counts.misses += 1
            return ReadResult(None, "miss")
        self._counts.read_throughs += 1
        await self._write_back(op)
        return ReadResult(value, "postgres")

    async def _recompute(self, pg: Recompute) -> RedisOp:
        if self._pool is None:
            raise RuntimeError("CacheReader used before start() (or after close())")
        try:
            async with asyncio.timeout(POSTGRES_TIMEOUT_S), self._pool.acquire() as conn:
                return await pg(conn, datetime.now(UTC))
        except _POSTGRES_DOWN as exc:
            raise CacheUnavailableError(f"PostgreSQL could not answer: {exc!r}") from exc

    async def _write_back(self, op: RedisOp) -> None:
        """Write `op` to the master (never the replica); a failure only costs the cache.

        Awaited, within the read budget, so that when a read returns its entry
        is back in Redis: one more round trip on a read that already paid a
        PostgreSQL query.
        """
        try:
            async with asyncio.timeout(self._budget_s):
                await redis_sink.write(self._master, [op])
        except _WRITE_FAILED as exc:
            self._counts.write_back_errors += 1
            log.warning("read-through write-back failed: %r", exc)
        else:
            self._counts.write_backs += 1

    def _log_transition(self, before: BreakerState, exc: BaseException | None) -> None:
        after = self._breaker.state
        if after is before:
            return
        if after is BreakerState.OPEN:
            log.warning(
                "redis circuit breaker open (%r): reads go to PostgreSQL for %.1f s",
                exc,
                self._breaker.reset_s,
            )
        elif after is BreakerState.CLOSED:
            log.info("redis circuit breaker closed: reads go to Redis again")


# --- Redis fetches and ids ---------------------------------------------------------------
async def _fetch_hash(redis: Redis, key: str) -> dict[str, str] | None:
    """HGETALL; an absent key is an empty hash in Redis and None here."""
    fields = await redis.hgetall(key)
    return {_text(k): _text(v) for k, v in fields.items()} or None


async def _fetch_string(redis: Redis, key: str) -> str | None:
    value = await redis.get(key)
    return None if value is None else _text(value)


def _session_id(value: str) -> str:
    """The canonical UUID text keys and rows use; anything else is a caller's bug."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"session_id must be a UUID, got {value!r}") from exc


def _user_id(value: str) -> str:
    if not isinstance(value, str) or not _USER_ID.fullmatch(value):
        raise ValueError(f"user_id must match {USER_ID_PATTERN}, got {value!r}")
    return value


def _speaker_id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"speaker_id must be an int ≥ 0, got {value!r}")
    return value
