"""`CacheReader`: the read library for roleplay services (SPEC §7, §8).

Reads sessions, user state, AI responses and voice clips from Redis, and from
PostgreSQL, the source of truth, whenever Redis cannot answer in time. Every
result says which source served it, and for Redis which target and node, so a
service can log and measure it.

    async with CacheReader.from_settings() as reader:
        hit = await reader.get_ai_response(prompt)
        if hit.value is not None:
            reply = hit.value["response"]  # hit.source: "redis" or "postgres"
            # hit.target: "ai" (the family's target), hit.node: "master" or "replica"

One reader per process: it holds the Redis clients, a small PostgreSQL pool, a
circuit breaker and a queue per Redis target, whose state only means something
when it is shared.

How a read goes
---------------
1. The key's family (`streams.redis_targets.key_family`) picks its target,
   SPEC §8: REDIS_SESSIONS_URL (sessions, user state), REDIS_AI_URL or
   REDIS_VOICE_URL, each REDIS_URL when unset. Families whose URLs are equal
   share one target: its clients, breaker and queue (the default is one
   target, as before per-family targets existed). A target is named after its
   families, `sessions`, `ai`, `voice` or e.g. `sessions+ai+voice`.
2. The read takes one of the target's `max_in_flight` slots (MAX_IN_FLIGHT),
   waiting its turn when all are taken (below, "What is Redis's fault").
3. The node: the replica or the master (below, "Replicas"), within a budget
   of READ_TIMEOUT_MS for the round trip. The clients make no retries: a retry
   loop would spend the budget on a server that is already known to be failing.
4. Redis answered with the entry → source "redis", `node` "master" or "replica".
5. Redis answered "absent" → PostgreSQL recomputes what the key should hold
   (`streams.read.recompute`, the worker's own projections). An entry still inside
   its TTL is returned (source "postgres") and written back to the family's
   master with its remaining TTL (read-through); a missing or expired entry is a
   miss everywhere (source "miss") and nothing is written.
6. Redis failed or timed out, or the target's breaker is open → PostgreSQL
   answers the same way, without a write-back (Redis is not healthy; the worker
   rebuilds). When PostgreSQL cannot answer either, `CacheUnavailableError` is
   raised: a miss would be a lie (a missing session is not an ended one).

Replicas: where reading one is safe
-----------------------------------
For a Sentinel target (`redis+sentinel://`), session and user-state reads go
to a replica, AI responses and voice clips to the master:

- Sessions and user state are state with a TTL, not cache entries ranked for
  eviction (the sessions target's policy is `volatile-ttl`), so who reads them
  changes nothing on the master. A replica lags its master by a few
  milliseconds: a read right after an event may see the state before it, or
  "absent" for a key just created (then PostgreSQL answers and writes it back
  to the master: absolute values, so harmless). A service that must read its
  own write reads PostgreSQL's answer in the event it published, not the cache.
- AI responses (`allkeys-lru`) and voice clips (`allkeys-lfu`) are evicted by
  how recently and how often they are read, and a read on a replica is
  invisible to the master's LRU clock and LFU counter (measured: a clip read
  on the replica had `OBJECT FREQ` 5 on the master and 13 on the replica).
  Read from a replica, the most used entries would look unused to the master
  and be evicted first.

The replica is one the Sentinels name and do not consider down (round robin
among several). When none is known or it fails, the master answers (node
"master"): a replica has a breaker of its own, so a dead replica costs one
failed round trip per read (a hung one, one budget) only until that breaker
opens, then session reads go straight to the master. While a master is down
its replica keeps serving session reads (partial failure: the nodes that
answer go on).

REDIS_REPLICA_URL, older than the per-family targets, names the replica of the
targets at REDIS_URL, and there serves every family, as it always did: an
operator who sets it for the caches accepts that their reads do not feed the
master's LRU/LFU (use a Sentinel target to get the policy above).

What is Redis's fault: one breaker per target, and the process's own queue
-------------------------------------------------------------------------
Each target has its own circuit breaker (and its replica another): a dead
voice master sends voice reads to PostgreSQL while session and AI reads stay
on Redis. A breaker counts only what Redis caused: a refused or reset
connection, no master or replica known to the Sentinels, an error reply that
says the node cannot serve (LOADING, READONLY, MASTERDOWN, TRYAGAIN,
CLUSTERDOWN, an authentication refusal), and a round trip that took longer
than the budget while this process was able to notice its answer. An error
reply about the request itself (WRONGTYPE, NOPERM) is an answer from a live
server: that read goes to PostgreSQL, and the breaker counts a success.

Time the reader's own process spent queueing is not Redis's. Measured before
this rule: at 3 000 simulated users in one process (~9 000 reads/s asked of a
client that issues ~4 200/s here), every read was in flight at once, each
waiting for the event loop to get round to it; the 50 ms budget ran out in
the client, the breaker opened and 83 % of reads went to PostgreSQL, which is
slower per read and shared by every service, and then timed out too. Two
mechanisms keep that load off the breaker:

- A bounded queue of the process's own, per target: at most `max_in_flight`
  round trips in flight (READ_MAX_IN_FLIGHT, default 32: at ~0.2 ms a round trip that is
  ~160 000 reads/s, and at 2 ms, a remote Redis, 16 000/s, both more than one
  Python process issues); other reads wait for a slot (an
  `asyncio.Semaphore`, first come first served) and the budget starts once
  they have one. The wait is counted (`stats.queued`, `stats.queue_wait_s`),
  never blamed on Redis, and not shed: a process over its capacity gets slower
  answers from Redis, which is what it can serve fastest; sending the excess
  to PostgreSQL would only add slower reads to the same saturated process (and
  to a database shared with the worker). With the queue, the work the event
  loop does between two looks at a socket stays small, so a round trip
  measures Redis, not the loop.
- A budget that notices when the loop was late. The budget is a timer on the
  loop's clock; when it fires more than a tolerance (a tenth of the budget, at
  least 2 ms) after it was due, the process was too busy to have read an
  answer that may well be waiting in the socket: the round trip gets more
  time, as much again as the loop was late, and is judged at the next look.
  Only a look on time with no answer blames Redis. A round trip still late
  after OVERLOAD_GRACE_S more is answered by PostgreSQL without charging the
  breaker (`stats.overloaded`). The clients' own socket timeouts are set past
  that (a backstop): they would time out under the same lateness, without
  noticing it.

Measured with both (`rpcache bench --quick --only reads`, 2026-11-29): the
3 000-user level was served 100 % by Redis, 8 700 reads/s, p99 59 ms, no
fallback and no breaker opening; 55 % of its reads waited for a slot, 18 ms on
average.

The alternative of measuring with the connection's own timeout (redis-py's
`socket_timeout`) does not separate the two: it is an asyncio timer like the
budget, fires just as late under load, and cancels an answer already received.

Why the breaker is written here
-------------------------------
Instead of taken from a library, after evaluating the two asked for:

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
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar

import asyncpg
import orjson
import redis.exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import ReplicaNotFoundError, SentinelConnectionPool
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
from streams.redis_targets import (
    KEY_FAMILIES,
    KeyFamily,
    RedisTargets,
    Target,
    key_family,
    target_urls,
)
from streams.security import redis_options
from streams.settings import Settings, get_settings
from streams.sinks import redis as redis_sink
from streams.store.postgres import Connection

log = logging.getLogger(__name__)

Source = Literal["redis", "postgres", "miss"]
Node = Literal["master", "replica"]
V = TypeVar("V")
W = TypeVar("W")

POSTGRES_TIMEOUT_S = 5.0
"""Ceiling of one PostgreSQL fallback read: the last resort may be slow, not stuck."""

MAX_IN_FLIGHT: Final = 32
"""Redis round trips one reader has in flight per target; more reads wait for a slot."""

OVERLOAD_GRACE_S: Final = 1.0
"""How much longer than the budget a round trip may take while this process's event
loop is late, before PostgreSQL answers instead (without charging the breaker)."""

OVERLOAD_LOG_EVERY_S: Final = 10.0
"""At most one warning this often about overloaded reads (with their count so far)."""

REPLICA_READ_FAMILIES: Final[frozenset[KeyFamily]] = frozenset({"sessions"})
"""Families a Sentinel target's replica serves (module docstring, "Replicas")."""

_REDIS_FAILED: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # refused, reset, no master/replica known, LOADING, auth
    redis_errors.TimeoutError,  # the clients' socket timeouts (a backstop)
    redis_errors.ReadOnlyError,  # READONLY: a demoted master
    redis_errors.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN (a replica cut off, serving no data)
    redis_errors.TryAgainError,
    TimeoutError,  # the reader's budget, run out while the loop was on time
    OSError,
)
"""Failures Redis caused: they count for the node's breaker (module docstring).

Any other `RedisError` is an answer from a live server about the request (e.g.
WRONGTYPE): that read falls back to PostgreSQL, but the breaker counts it as a
success.
"""

_WRITE_FAILED: tuple[type[BaseException], ...] = (redis_errors.RedisError, *_REDIS_FAILED)

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
    """One read: the value (None for a miss) and the source that served it.

    `target` and `node` say where in Redis: the family's target (`sessions`,
    `ai`, `voice`, or families sharing one, `sessions+ai+voice`) and, when Redis
    served the value, the node ("master" or "replica"; None otherwise). They do
    not take part in equality: two results are equal when value and source are.
    """

    value: V | None
    source: Source
    target: str | None = field(default=None, compare=False)
    node: Node | None = field(default=None, compare=False)

    def map(self, fn: Callable[[V], W]) -> ReadResult[W]:
        """The same result with `fn` applied to a present value."""
        value = None if self.value is None else fn(self.value)
        return ReadResult(value, self.source, self.target, self.node)


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


_SEVERITY: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


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

    @property
    def blocked(self) -> bool:
        """Whether `acquire()` would say no now (without changing the state)."""
        if self._state is BreakerState.CLOSED:
            return False
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at < self.reset_s:
            return True
        return self._probing

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
        """The call ended without a verdict (cancelled, or not Redis's fault): another
        read may probe."""
        if permit.probe:
            self._probing = False

    def _trip(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self.opens += 1


# --- the budget of one round trip ------------------------------------------------------
def loop_tolerance_s(budget_s: float) -> float:
    """How late the budget's timer may fire and still count as the loop being on time."""
    return max(0.002, budget_s / 10)


class _Deadline:
    """The budget of one Redis round trip on the loop's clock, not counting the
    loop's own lateness (module docstring, "What is Redis's fault").

    Drives an `asyncio.Timeout` entered without a deadline: at the budget's end
    it expires it, unless its own timer fired late, in which case it looks again
    after as much time again as the loop was late, up to `grace_s` past the
    budget; expiring past that sets `overloaded`.
    """

    __slots__ = (
        "_due",
        "_handle",
        "_limit",
        "_loop",
        "_timeout",
        "_tolerance",
        "late",
        "overloaded",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: asyncio.Timeout,
        budget_s: float,
        grace_s: float,
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._due = loop.time() + budget_s
        self._limit = self._due + grace_s
        self._tolerance = loop_tolerance_s(budget_s)
        self.late = False
        """The loop was found late at least once: the round trip was given more time."""
        self.overloaded = False
        """Expired while the loop was still late: the process's fault, not Redis's."""
        self._handle = loop.call_at(self._due, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        lateness = now - self._due
        if lateness > self._tolerance:
            self.late = True
            if now < self._limit:
                self._due = min(now + lateness, self._limit)
                self._handle = self._loop.call_at(self._due, self._check)
                return
            self.overloaded = True
        # Expire at the next turn of the loop: a task already woken by its answer runs first.
        self._timeout.reschedule(now)

    def cancel(self) -> None:
        self._handle.cancel()


class _ProcessLateError(Exception):
    """A round trip expired while this process's event loop was late (not Redis's fault)."""


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
    """Served by Redis (a master or a replica)."""
    misses: int = 0
    """No live entry anywhere (absent, or its TTL has run out)."""
    fallbacks: int = 0
    """Answered by PostgreSQL because Redis failed, timed out or the breaker was open."""
    read_throughs: int = 0
    """Redis answered "absent" and PostgreSQL had a live entry."""
    write_backs: int = 0
    """Read-through entries written back to the family's Redis master."""
    write_back_errors: int = 0
    redis_errors: int = 0
    """Redis round trips that failed, ran out of budget or got an error reply."""
    breaker_opens: int = 0
    """Times a target's breaker opened (replica breakers not included), all targets."""
    breaker_state: BreakerState = BreakerState.CLOSED
    """The worst state of the targets' breakers (open, then half-open, then closed)."""
    replica_hits: int = 0
    """Of `hits`, served by a replica."""
    replica_fallbacks: int = 0
    """Reads the master answered because the replica failed or its breaker was open."""
    queued: int = 0
    """Reads that waited for a slot of their target (this process's own queue)."""
    queue_wait_s: float = 0.0
    """Their total wait, in seconds: time never counted against Redis."""
    loop_late: int = 0
    """Round trips whose budget ran out while this process's event loop was late, so
    they were given more time instead of being blamed on Redis."""
    overloaded: int = 0
    """Of those, still unanswered after OVERLOAD_GRACE_S: PostgreSQL answered and
    no breaker was charged."""
    breakers: Mapping[str, BreakerState] = field(default_factory=dict)
    """Each breaker's state: a target's by its name, its replica's as `name/replica`."""


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
    replica_hits: int = 0
    replica_fallbacks: int = 0
    queued: int = 0
    queue_wait_s: float = 0.0
    loop_late: int = 0
    overloaded: int = 0


# --- targets -------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, slots=True)
class ReadTarget:
    """One Redis target as the reader uses it: where a family's reads and write-backs go."""

    name: str
    """The families it serves, joined by `+` (`voice`, `sessions+ai+voice`)."""
    master: Redis
    """Reads that must reach the master, and every write-back."""
    replica: Redis | None = None
    replica_families: frozenset[KeyFamily] = frozenset()
    """Families read from `replica` (when it answers)."""


class _Route:
    """A target with its breakers and its queue (one per distinct target)."""

    __slots__ = ("breaker", "gate", "replica_breaker", "target")

    def __init__(
        self, target: ReadTarget, settings: Settings, clock: Callable[[], float], slots: int
    ) -> None:
        self.target = target
        self.breaker = CircuitBreaker(settings.breaker_fail_max, settings.breaker_reset_s, clock)
        self.replica_breaker = CircuitBreaker(
            settings.breaker_fail_max, settings.breaker_reset_s, clock
        )
        self.gate = asyncio.Semaphore(slots)


class _Outcome(enum.Enum):
    NEXT_NODE = "next node"
    """The node failed: the next node (a replica's master), else PostgreSQL."""
    POSTGRES = "postgres"
    """PostgreSQL answers now: a live node answered an error about the request, or
    this process was too late to look for the answer (`stats.overloaded`)."""


# --- the reader -------------------------------------------------------------------
Recompute = Callable[[Connection, datetime], Awaitable[RedisOp]]
"""What PostgreSQL says the key should hold at `now` (a `streams.read.recompute` op)."""


def socket_timeout_s(budget_s: float) -> float:
    """The clients' own socket timeouts: past any deadline of the reader (a backstop)."""
    return 2 * budget_s + OVERLOAD_GRACE_S


def client_options(budget_s: float, client_name: str | None = None) -> dict[str, Any]:
    """redis-py options of the reader's clients: no retry loop, no health-check
    round trip, socket timeouts past the reader's own deadline."""
    timeout_s = socket_timeout_s(budget_s)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if client_name:
        options["client_name"] = client_name
    return options


def redis_client(
    url: str,
    timeout_s: float,
    tls: dict[str, Any] | None = None,
    client_name: str | None = None,
) -> Redis:
    """A client for one Redis that fails fast: no retry loop, no health check.

    `timeout_s`: the reader's budget (its socket timeouts are a backstop past it).
    `tls`: `security.redis_options` for `url` (CA and client certificate of a
    `rediss://` URL); the ACL user and password travel in the URL.
    """
    return Redis.from_url(url, **(tls or {}), **client_options(timeout_s, client_name))


class _ReplicaPool(SentinelConnectionPool):
    """A Sentinel-managed replica pool that never falls back to the master.

    redis-py's own pool connects to the master when no replica answers; the
    reader reads the master itself then, so it can say which node served.
    """

    async def rotate_slaves(self) -> AsyncIterator[Any]:
        replicas = await self.sentinel_manager.discover_slaves(self.service_name)
        if replicas:
            if self.slave_rr_counter is None:
                self.slave_rr_counter = random.randint(0, len(replicas) - 1)
            for _ in range(len(replicas)):
                self.slave_rr_counter = (self.slave_rr_counter + 1) % len(replicas)
                yield replicas[self.slave_rr_counter]
        raise ReplicaNotFoundError(f"no replica of {self.service_name!r} answers")


def _sentinel_replica(master: Redis, target: Target) -> Redis:
    """A replica client on the same Sentinels and options as `master`."""
    pool = master.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        raise TypeError(f"not a Sentinel-managed client: {target.describe()}")
    client: Redis = pool.sentinel_manager.slave_for(
        target.master_name, connection_pool_class=_ReplicaPool
    )
    return client


async def _close(client: Redis) -> None:
    """Close a client, and for a Sentinel-managed one the Sentinel connections too."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        await sentinel.aclose()


class CacheReader:
    """Sessions, user state, AI responses and voice clips; Redis first, PostgreSQL behind.

    Build it with `from_settings()` and use it as an async context manager (or
    call `start()` / `close()`). The reader owns the clients and pool it is
    given and closes them.

    By hand: `master` (and `replica`, which then serves every family) for one
    target, or `targets` with a `ReadTarget` per family.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        master: Redis | None = None,
        replica: Redis | None = None,
        targets: Mapping[KeyFamily, ReadTarget] | None = None,
        pool: asyncpg.Pool | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if targets is None:
            if master is None:
                raise TypeError("CacheReader needs `master` or `targets`")
            everything = frozenset(KEY_FAMILIES)
            one = ReadTarget("+".join(KEY_FAMILIES), master, replica, everything)
            targets = dict.fromkeys(KEY_FAMILIES, one)
        elif master is not None or replica is not None:
            raise TypeError("CacheReader takes `master`/`replica` or `targets`, not both")
        missing = [f for f in KEY_FAMILIES if f not in targets]
        if missing:
            raise ValueError(f"no Redis target for {', '.join(missing)}")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        self.settings = settings
        self._pool = pool
        self._budget_s = settings.read_timeout_ms / 1000
        routes: dict[int, _Route] = {}
        self._routes: dict[KeyFamily, _Route] = {}
        for family in KEY_FAMILIES:
            target = targets[family]
            if id(target) not in routes:
                routes[id(target)] = _Route(target, settings, clock, max_in_flight)
            self._routes[family] = routes[id(target)]
        self._distinct = list(routes.values())
        self._counts = _Counters()
        self._overload_logged_at = -OVERLOAD_LOG_EVERY_S

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, client_name: str | None = None
    ) -> CacheReader:
        """A reader for every family's target (REDIS_URL, REDIS_SESSIONS_URL,
        REDIS_AI_URL, REDIS_VOICE_URL), REDIS_REPLICA_URL and DATABASE_URL.

        `client_name`: sent with CLIENT SETNAME on every Redis connection (to
        find the reader's connections in CLIENT LIST); none by default.
        """
        settings = settings or get_settings()
        budget_s = settings.read_timeout_ms / 1000
        clients = RedisTargets.from_settings(settings, **client_options(budget_s, client_name))
        urls = target_urls(settings)
        default_url = settings.redis_url.get_secret_value()
        legacy: Redis | None = None
        if settings.redis_replica_url is not None:
            url = settings.redis_replica_url.get_secret_value()
            legacy = redis_client(url, budget_s, redis_options(settings, url), client_name)
        targets: dict[KeyFamily, ReadTarget] = {}
        for families, master in clients.distinct():
            target = clients.targets[families[0]]
            name = "+".join(families)
            if legacy is not None and urls[families[0]] == default_url:
                read = ReadTarget(name, master, legacy, frozenset(families))
            elif target.is_sentinel:
                replica = _sentinel_replica(master, target)
                read = ReadTarget(name, master, replica, REPLICA_READ_FAMILIES)
            else:
                read = ReadTarget(name, master)
            targets |= dict.fromkeys(families, read)
        return cls(settings, targets=targets, max_in_flight=settings.read_max_in_flight)

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
        clients: dict[int, Redis] = {}
        for route in self._distinct:
            for client in (route.target.replica, route.target.master):
                if client is not None:
                    clients.setdefault(id(client), client)
        for client in clients.values():
            await _close(client)

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
        """The worst state of the targets' breakers (one target: its breaker's state)."""
        return max((r.breaker.state for r in self._distinct), key=_SEVERITY.__getitem__)

    def breaker_for(self, family: KeyFamily) -> CircuitBreaker:
        """The breaker of `family`'s target (shared by the families of one target)."""
        return self._routes[family].breaker

    def target_name(self, family: KeyFamily) -> str:
        return self._routes[family].target.name

    @property
    def stats(self) -> ReaderStats:
        c = self._counts
        breakers: dict[str, BreakerState] = {}
        for route in self._distinct:
            breakers[route.target.name] = route.breaker.state
            if route.target.replica is not None:
                breakers[f"{route.target.name}/replica"] = route.replica_breaker.state
        return ReaderStats(
            **asdict(c),  # every counter of _Counters is a field of ReaderStats
            breaker_opens=sum(r.breaker.opens for r in self._distinct),
            breaker_state=self.breaker_state,
            breakers=breakers,
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
        family = key_family(key)
        route = self._routes[family]
        name = route.target.name
        got = await self._from_redis(route, family, key, fetch)
        if got is None:
            return await self._fallback(pg, value_of, name)
        cached, node = got
        if cached is not None:
            self._counts.hits += 1
            if node == "replica":
                self._counts.replica_hits += 1
            return ReadResult(cached, "redis", name, node)
        return await self._read_through(pg, value_of, route.target)

    async def _from_redis(
        self,
        route: _Route,
        family: KeyFamily,
        key: str,
        fetch: Callable[[Redis, str], Awaitable[V | None]],
    ) -> tuple[V | None, Node] | None:
        """What Redis holds for `key` and the node that said so; None when PostgreSQL
        must answer (the target's breakers are open, or its nodes failed)."""
        target = route.target
        replica = target.replica if family in target.replica_families else None
        if route.breaker.blocked and (replica is None or route.replica_breaker.blocked):
            return None  # nothing to wait for: do not queue
        gate = route.gate
        if gate.locked():
            loop = asyncio.get_running_loop()
            started = loop.time()
            self._counts.queued += 1
            await gate.acquire()
            self._counts.queue_wait_s += loop.time() - started
        else:
            await gate.acquire()
        try:
            if replica is not None:
                permit = route.replica_breaker.acquire()
                if permit is not None:
                    got = await self._attempt(route, "replica", permit, replica, fetch, key)
                    if got is _Outcome.POSTGRES:
                        return None
                    if got is not _Outcome.NEXT_NODE:
                        return got, "replica"
            permit = route.breaker.acquire()
            if permit is None:
                return None
            got = await self._attempt(route, "master", permit, target.master, fetch, key)
            if isinstance(got, _Outcome):
                return None
            if replica is not None:
                self._counts.replica_fallbacks += 1
            return got, "master"
        finally:
            gate.release()

    async def _attempt(
        self,
        route: _Route,
        node: Node,
        permit: Permit,
        client: Redis,
        fetch: Callable[[Redis, str], Awaitable[V | None]],
        key: str,
    ) -> V | _Outcome | None:
        """One round trip to one node, its outcome reported to that node's breaker."""
        breaker = route.breaker if node == "master" else route.replica_breaker
        before = breaker.state
        try:
            value = await self._round_trip(client, fetch, key)
        except _ProcessLateError:
            self._counts.overloaded += 1
            breaker.release(permit)
            self._log_overload(route, node)
            return _Outcome.POSTGRES
        except _REDIS_FAILED as exc:
            self._counts.redis_errors += 1
            breaker.failure(permit)
            self._log_transition(route, node, breaker, before, exc)
            return _Outcome.NEXT_NODE
        except redis_errors.RedisError as exc:
            self._counts.redis_errors += 1
            breaker.success(permit)
            self._log_transition(route, node, breaker, before, exc)
            log.warning("redis refused reading %s (%s); reading PostgreSQL", key, exc)
            return _Outcome.POSTGRES
        except BaseException:
            breaker.release(permit)
            raise
        breaker.success(permit)
        self._log_transition(route, node, breaker, before, None)
        return value

    async def _round_trip(
        self, client: Redis, fetch: Callable[[Redis, str], Awaitable[V | None]], key: str
    ) -> V | None:
        """`fetch` within the budget, the loop's own lateness not counted (`_Deadline`)."""
        loop = asyncio.get_running_loop()
        deadline: _Deadline | None = None
        try:
            async with asyncio.timeout(None) as timeout:
                deadline = _Deadline(loop, timeout, self._budget_s, OVERLOAD_GRACE_S)
                try:
                    return await fetch(client, key)
                finally:
                    deadline.cancel()
        except TimeoutError:
            if deadline is not None and deadline.overloaded:
                raise _ProcessLateError from None
            raise
        finally:
            if deadline is not None and deadline.late:
                self._counts.loop_late += 1

    async def _fallback(
        self, pg: Recompute, value_of: Callable[[RedisOp], V | None], target: str
    ) -> ReadResult[V]:
        """Redis is not usable for this read: PostgreSQL answers, nothing is written back."""
        self._counts.fallbacks += 1
        value = value_of(await self._recompute(pg))
        if value is None:
            self._counts.misses += 1
            return ReadResult(None, "miss", target)
        return ReadResult(value, "postgres", target)

    async def _read_through(
        self, pg: Recompute, value_of: Callable[[RedisOp], V | None], target: ReadTarget
    ) -> ReadResult[V]:
        """Redis has no entry: take PostgreSQL's and put it back with its remaining TTL."""
        op = await self._recompute(pg)
        value = value_of(op)
        if value is None:
            self._counts.misses += 1
            return ReadResult(None, "miss", target.name)
        self._counts.read_throughs += 1
        await self._write_back(target.master, op)
        return ReadResult(value, "postgres", target.name)

    async def _recompute(self, pg: Recompute) -> RedisOp:
        if self._pool is None:
            raise RuntimeError("CacheReader used before start() (or after close())")
        acquired = False
        try:
            async with asyncio.timeout(POSTGRES_TIMEOUT_S), self._pool.acquire() as conn:
                acquired = True
                return await pg(conn, datetime.now(UTC))
        except _POSTGRES_DOWN as exc:
            waiting = "" if acquired else " (no connection of the reader's pool within the time)"
            raise CacheUnavailableError(f"PostgreSQL could not answer: {exc!r}{waiting}") from exc

    async def _write_back(self, master: Redis, op: RedisOp) -> None:
        """Write `op` to the family's master (never a replica); a failure only costs
        the cache.

        Awaited, within the read budget, so that when a read returns its entry
        is back in Redis: one more round trip on a read that already paid a
        PostgreSQL query.
        """
        try:
            async with asyncio.timeout(self._budget_s):
                await redis_sink.write(master, [op])
        except _WRITE_FAILED as exc:
            self._counts.write_back_errors += 1
            log.warning("read-through write-back failed: %r", exc)
        else:
            self._counts.write_backs += 1

    def _log_overload(self, route: _Route, node: Node) -> None:
        """At most one line per OVERLOAD_LOG_EVERY_S: an overloaded process must not
        also flood its log."""
        now = time.monotonic()
        if now - self._overload_logged_at < OVERLOAD_LOG_EVERY_S:
            return
        self._overload_logged_at = now
        log.warning(
            "reading from %s (%s): no answer %.1f s past the budget while this process's "
            "event loop was too late to look; PostgreSQL answers, Redis is not blamed "
            "(%d such reads so far: the process is over its capacity)",
            route.target.name,
            node,
            OVERLOAD_GRACE_S,
            self._counts.overloaded,
        )

    def _log_transition(
        self,
        route: _Route,
        node: Node,
        breaker: CircuitBreaker,
        before: BreakerState,
        exc: BaseException | None,
    ) -> None:
        after = breaker.state
        if after is before:
            return
        where = route.target.name if node == "master" else f"{route.target.name} replica"
        instead = "PostgreSQL" if node == "master" else "the master"
        if after is BreakerState.OPEN:
            log.warning(
                "redis circuit breaker of %s open (%r): its reads go to %s for %.1f s",
                where,
                exc,
                instead,
                breaker.reset_s,
            )
        elif after is BreakerState.CLOSED:
            log.info("redis circuit breaker of %s closed: its reads go to Redis again", where)


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
