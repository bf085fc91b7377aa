"""PostgreSQL behind Redis: the answer when Redis cannot give one, and the read-through.

PostgreSQL is the source of truth: it recomputes what a key should hold with
the worker's own projections (`streams.read.recompute`). Two cases, steps 5
and 6 of "How a read goes" in `streams.read.reader`:

- Redis answered "absent" (`read_through`): a live entry is returned and
  written back to the family's master with its remaining TTL.
- Redis failed, timed out or its breaker is open (`fallback`): the entry is
  returned and nothing is written back (Redis is not healthy; the worker
  rebuilds).

When PostgreSQL cannot answer either, `CacheUnavailableError`: a miss would be
a lie (a missing session is not an ended one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import asyncpg
import redis.exceptions as redis_errors

from streams.database import pool_options
from streams.errors import RpcacheError
from streams.projections import RedisOp
from streams.read.clients import REDIS_FAILED
from streams.read.results import ReadResult
from streams.read.routes import ReadTarget
from streams.read.stats import Counters
from streams.settings import Settings
from streams.sinks import redis as redis_sink
from streams.store.postgres import Connection

log = logging.getLogger("streams.read.reader")
"""The reader's logger, by the name services and `rpcache bench` set its level with."""

V = TypeVar("V")

POSTGRES_TIMEOUT_S = 5.0
"""Ceiling of one PostgreSQL fallback read: the last resort may be slow, not stuck."""

Recompute = Callable[[Connection, datetime], Awaitable[RedisOp]]
"""What PostgreSQL says the key should hold at `now` (a `streams.read.recompute` op)."""

_WRITE_FAILED: tuple[type[BaseException], ...] = (redis_errors.RedisError, *REDIS_FAILED)

_POSTGRES_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)


class CacheUnavailableError(RpcacheError):
    """Neither Redis nor PostgreSQL could answer the read."""

    retriable = True


class PostgresFallback:
    """The PostgreSQL side of a reader's reads: its pool, and the write-backs it makes."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool | None, budget_s: float, counts: Counters
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._budget_s = budget_s
        self._counts = counts

    async def start(self) -> None:
        """Create the pool (unless one was given); it connects on first use.

        With min_size 0 a service starts, and is served from Redis, while
        PostgreSQL is down. The schema is the worker's: the reader never migrates.
        """
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._settings.database_url.get_secret_value(),
                min_size=0,
                max_size=self._settings.pg_pool_size,
                command_timeout=POSTGRES_TIMEOUT_S,
                **pool_options(self._settings),
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def fallback(
        self, pg: Recompute, value_of: Callable[[RedisOp], V | None], target: str
    ) -> ReadResult[V]:
        """Redis is not usable for this read: PostgreSQL answers, nothing is written back."""
        self._counts.fallbacks += 1
        value = value_of(await self._recompute(pg))
        if value is None:
            self._counts.misses += 1
            return ReadResult(None, "miss", target)
        return ReadResult(value, "postgres", target)

    async def read_through(
        self, pg: Recompute, value_of: Callable[[RedisOp], V | None], target: ReadTarget
    ) -> ReadResult[V]:
        """Redis has no entry: take PostgreSQL's and put it back with its remaining TTL."""
        op = await self._recompute(pg)
        value = value_of(op)
        if value is None:
            self._counts.misses += 1
            return ReadResult(None, "miss", target.name)
        self._counts.read_throughs += 1
        await self._write_back(target, op)
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

    async def _write_back(self, target: ReadTarget, op: RedisOp) -> None:
        """Write `op` to the family's master (never a replica), as the worker's sink
        writes it (`sinks.redis.write_target`: on a cluster, to the master of the
        stored key's slot, in the target's key layout); a failure only costs the
        cache.

        Awaited, within the read budget, so that when a read returns its entry
        is back in Redis: one more round trip on a read that already paid a
        PostgreSQL query.
        """
        try:
            async with asyncio.timeout(self._budget_s):
                await redis_sink.write_target(target.master, [op], target.layout)
        except _WRITE_FAILED as exc:
            self._counts.write_back_errors += 1
            log.warning("read-through write-back failed: %r", exc)
        else:
            self._counts.write_backs += 1
