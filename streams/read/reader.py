"""`CacheReader`: the read library for roleplay services (SPEC §7, §8).

Reads sessions, user state, AI responses and voice clips from Redis, and from
PostgreSQL, the source of truth, whenever Redis cannot answer in time. Every
result says which source served it, and for Redis which target and node, so a
service can log and measure it.

    async with CacheReader.from_settings() as reader:
        hit = await reader.get_ai_response(prompt)
        if hit.value is not None:
            reply = hit.value["response"]  # hit.source: "redis" or "postgres"
            # hit.target: "ai" (the family's target), hit.node: "master" or "replica",
            # hit.shard: on a cluster target, the master (host:port) whose slots hold it

One reader per process: it holds the Redis clients, a small PostgreSQL pool, a
circuit breaker and a queue per Redis target, whose state only means something
when it is shared.

How a read goes
---------------
1. The key's family (`streams.redis_targets.key_family`) picks its target,
   SPEC §8: REDIS_SESSIONS_URL (sessions, user state), REDIS_AI_URL or
   REDIS_VOICE_URL, each REDIS_URL when unset. Families whose URLs are equal
   share one target: its clients, breakers and queue (the default is one
   target, as before per-family targets existed). A target is named after its
   families, `sessions`, `ai`, `voice` or e.g. `sessions+ai+voice`. On a
   cluster target the key is read at the key stored for it
   (`RedisTargets.key`: tagged in the design layout), and its slot picks the
   shard (below, "Cluster targets").
2. The read takes one of the target's `max_in_flight` slots (MAX_IN_FLIGHT),
   waiting its turn when all are taken (below, "What is Redis's fault").
3. The node: the replica or the master (below, "Replicas"), within a budget
   of READ_TIMEOUT_MS for the round trip. The clients make no retries: a retry
   loop would spend the budget on a server that is already known to be failing.
4. Redis answered with the entry → source "redis", `node` "master" or "replica"
   (and on a cluster `shard`, the master's `host:port`).
5. Redis answered "absent" → PostgreSQL recomputes what the key should hold
   (`streams.read.recompute`, the worker's own projections). An entry still inside
   its TTL is returned (source "postgres") and written back to the family's
   master with its remaining TTL (read-through, through the worker's sink:
   `sinks.redis.write_target`, so on a cluster to the master of the stored
   key's slot, in the target's layout); a missing or expired entry is a
   miss everywhere (source "miss") and nothing is written.
6. Redis failed or timed out, or the target's breaker is open → PostgreSQL
   answers the same way, without a write-back (Redis is not healthy; the worker
   rebuilds). When PostgreSQL cannot answer either, `CacheUnavailableError` is
   raised: a miss would be a lie (a missing session is not an ended one).

Replicas: where reading one is safe
-----------------------------------
For a Sentinel target (`redis+sentinel://`) or a cluster target
(`redis+cluster://`, a replica of the key's master), session and user-state
reads go to a replica, AI responses and voice clips to the master:

- Sessions and user state are state with a TTL, not cache entries ranked for
  eviction (the sessions target's policy is `noeviction`), so who reads them
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
master's LRU/LFU (use a Sentinel target to get the policy above). A cluster
target ignores it: its replicas are in its slot map.

Cluster targets: a breaker per master
-------------------------------------
A cluster target (`redis+cluster://`) is read through redis-py's
`RedisCluster`, which follows the cluster's slot map (MOVED, ASK): the
target's client for the reads that must reach a master and for every
write-back, and a second one that reads replicas only (round robin among a
master's replicas, `clients.cluster_replica`) for REPLICA_READ_FAMILIES.
Neither retries; both use a slot map with a shard missing for the other
shards' slots (`require_full_coverage` off, as the local cluster runs with
`cluster-require-full-coverage no`).

The masters of a cluster fail one at a time, so the breakers are per master,
a *shard* (`streams.read.slotmap`): the stored key's slot (CRC16, as Redis
computes it), then the master serving that slot now in the client's slot map,
whose breakers (its own, and its replicas') take the read. A dead or hung
master sends only its slots' reads to PostgreSQL (its session reads still go
to its replicas); the other masters' reads stay on Redis. The breakers are
named `<target>@<host:port>` and `<target>@<host:port>/replica`; the
target's own breaker (`<target>`) guards its slot map: read on the first
read (a client with no map, no seed answering), or read again when a key's
slot has no master in it (a shard lost its master and replicas). A failed
read on a shard also refreshes the map in the background (at most once a
second, `SlotMap.refresh_soon`): redis-py refreshes it after a connection
error, not after a read the reader's budget cut short, so without this a
hung master that was failed over would keep its slots on PostgreSQL. After a
failover the slots' new master has a breaker of its own, closed: reads go
back to Redis as soon as the map names it.

What is Redis's fault: one breaker per target, and the process's own queue
-------------------------------------------------------------------------
Each target has its own circuit breaker (and its replica another; a cluster
target one per master, above): a dead voice master sends voice reads to
PostgreSQL while session and AI reads stay on Redis. A breaker counts only
what Redis caused: a refused or reset connection, no master or replica known
to the Sentinels, no node of a cluster answering or none serving the key's
slot, an error reply that says the node cannot serve (LOADING, READONLY,
MASTERDOWN, TRYAGAIN, CLUSTERDOWN, an authentication refusal), and a round
trip that took longer than the budget while this process was able to notice
its answer. An error reply about the request itself (WRONGTYPE, NOPERM) is an
answer from a live server: that read goes to PostgreSQL, and the breaker
counts a success.

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

The parts
---------
This module is the four reads and the order of a read; each step lives in a
module of its own: `routes` (a family's target, its breakers and slots),
`slotmap` (a cluster target's key → slot → master), `nodes` (replica or
master, each under its breaker), `budget` (a round
trip's budget, the loop's lateness not counted), `breaker` (the circuit
breaker, and why it is written here), `fallback` (PostgreSQL: the fallback
and the read-through), `clients` (the Redis clients and what their failures
mean), `results` (`ReadResult`) and `stats` (`ReaderStats`). The names other
code imports from here are re-exported (`__all__`).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg
from redis.asyncio import Redis

from schemas.events import MAX_INT32, USER_ID_PATTERN
from schemas.hashing import H
from schemas.keys import (
    ai_response_key_for_hash,
    session_key,
    user_state_key,
    voice_key_for_hash,
)
from streams.projections import RedisOp
from streams.read import recompute
from streams.read.breaker import BreakerState, CircuitBreaker
from streams.read.budget import loop_tolerance_s
from streams.read.clients import Fetch, fetch_hash, fetch_string, redis_client
from streams.read.fallback import CacheUnavailableError, PostgresFallback, Recompute
from streams.read.nodes import RedisNodes
from streams.read.results import ReadResult, hash_value, json_object, string_value
from streams.read.routes import (
    MAX_IN_FLIGHT,
    REPLICA_READ_FAMILIES,
    ReadTarget,
    Routes,
    one_target,
    targets_from_settings,
)
from streams.read.stats import Counters, ReaderStats
from streams.redis_targets import KeyFamily, close_client, key_family
from streams.settings import Settings, get_settings
from streams.store.postgres import Connection

__all__ = [
    "MAX_IN_FLIGHT",
    "REPLICA_READ_FAMILIES",
    "BreakerState",
    "CacheReader",
    "CacheUnavailableError",
    "CircuitBreaker",
    "ReadResult",
    "ReadTarget",
    "ReaderStats",
    "hash_value",
    "json_object",
    "loop_tolerance_s",
    "redis_client",
    "string_value",
]

V = TypeVar("V")

_USER_ID = re.compile(USER_ID_PATTERN)


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
            targets = one_target(master, replica)
        elif master is not None or replica is not None:
            raise TypeError("CacheReader takes `master`/`replica` or `targets`, not both")
        self._routes = Routes(targets, settings, clock, max_in_flight)
        self.settings = settings
        budget_s = settings.read_timeout_ms / 1000
        self._counts = Counters()
        self._redis = RedisNodes(budget_s, self._counts)
        self._postgres = PostgresFallback(settings, pool, budget_s, self._counts)

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
        targets = targets_from_settings(settings, client_name)
        return cls(settings, targets=targets, max_in_flight=settings.read_max_in_flight)

    async def start(self) -> None:
        """Create the PostgreSQL pool; it connects on first use (`PostgresFallback.start`)."""
        await self._postgres.start()

    async def close(self) -> None:
        await self._postgres.close()
        await self._routes.aclose()
        for client in self._routes.clients():
            await close_client(client)

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
        return self._routes.breaker_state

    def breaker_for(self, family: KeyFamily) -> CircuitBreaker:
        """The breaker of `family`'s target (shared by the families of one target)."""
        return self._routes[family].breaker

    def target_name(self, family: KeyFamily) -> str:
        return self._routes[family].target.name

    @property
    def stats(self) -> ReaderStats:
        routes = self._routes
        return self._counts.snapshot(routes.breakers(), routes.breaker_opens, routes.breaker_state)

    # --- the four reads -------------------------------------------------------------
    async def get_session(self, session_id: str) -> ReadResult[dict[str, str]]:
        """`session:{id}`: the hash while the session is open and not idle for 30 min."""
        sid = _session_id(session_id)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.session_op(conn, sid, now)

        return await self._read(session_key(sid), fetch_hash, pg, hash_value)

    async def get_user_state(self, user_id: str) -> ReadResult[dict[str, str]]:
        """`user:{id}:state`: the hash for 1 h after the user's latest event."""
        uid = _user_id(user_id)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.user_op(conn, self.settings, uid, now)

        return await self._read(user_state_key(uid), fetch_hash, pg, hash_value)

    async def get_ai_response(self, prompt: str) -> ReadResult[dict[str, Any]]:
        """`ai_response:{H(prompt)}`: the parsed JSON of the cached response."""
        prompt_hash = H(prompt)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.ai_response_op(conn, prompt_hash, now)

        key = ai_response_key_for_hash(prompt_hash)
        result = await self._read(key, fetch_string, pg, string_value)
        return result.map(json_object)

    async def get_voice(self, speaker_id: int, text: str) -> ReadResult[str]:
        """`voice:{speaker_id}:{H(text)}`: the base64 audio of the cached clip."""
        speaker = _speaker_id(speaker_id)
        text_hash = H(text)

        async def pg(conn: Connection, now: datetime) -> RedisOp:
            return await recompute.voice_op(conn, speaker, text_hash, now)

        key = voice_key_for_hash(speaker, text_hash)
        return await self._read(key, fetch_string, pg, string_value)

    # --- the read path ----------------------------------------------------------------
    async def _read(
        self,
        key: str,
        fetch: Fetch[V],
        pg: Recompute,
        value_of: Callable[[RedisOp], V | None],
    ) -> ReadResult[V]:
        """Steps 1 to 6 of "How a read goes" (module docstring)."""
        self._counts.reads += 1
        family = key_family(key)
        route = self._routes[family]
        name = route.target.name
        got = await self._redis.read(route, family, key, fetch)
        if got is None:
            return await self._postgres.fallback(pg, value_of, name)
        if got.value is not None:
            self._counts.hits += 1
            if got.node == "replica":
                self._counts.replica_hits += 1
            return ReadResult(got.value, "redis", name, got.node, got.shard)
        return await self._postgres.read_through(pg, value_of, route.target)


# --- the ids a caller passes, checked before any I/O --------------------------------------
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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT32:
        # The events' own bound (schemas.events): no clip can have another id, and
        # PostgreSQL's integer column would refuse the query as if it were down.
        raise ValueError(f"speaker_id must be an int in 0..{MAX_INT32}, got {value!r}")
    return value
