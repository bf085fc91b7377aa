"""The project's exceptions and the rule that says which failures are worth retrying.

A transient failure (a server unreachable, restarting, a lost connection, a
deadlock) is retried with backoff inside the agent and never skips an event.
Anything else is a fault of the batch itself: the pipeline splits the batch
and dead-letters the one event that still fails on its own.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions as redis_errors
from aiokafka.errors import KafkaError


class RpcacheError(Exception):
    """Root of rpcache's own exceptions."""

    retriable: bool = False


_TRANSIENT_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.InterfaceError,
    # A connection killed mid-query (pg_terminate_backend, a restart) can leave
    # asyncpg's protocol state machine confused; a fresh connection is fine.
    asyncpg.exceptions._base.InternalClientError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
_TRANSIENT_REDIS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
)


def is_transient(exc: BaseException) -> bool:
    """True when waiting and trying again can make `exc` go away."""
    if isinstance(exc, RpcacheError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        return True  # a broker outage or leader move passes with time
    return isinstance(exc, (*_TRANSIENT_PG, *_TRANSIENT_REDIS, OSError, TimeoutError))
