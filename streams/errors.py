"""The project's exceptions, and the one table that says which failures wait.

Every failure inside the write path gets one of two verdicts (`Verdict`):

- **wait**: the server is alive but cannot take the write now (read-only
  after a failover, out of memory, disk full, too many connections, a
  snapshot failing, loading its data) or is unreachable or restarting. The
  batch is retried with backoff, forever; the offsets stay where they are,
  so nothing is skipped. An operator may have to act (free memory, fix a
  password): the worker waits for that, it never drops the event.
- **dead letter**: the failure is the batch's own. For a batch, the pipeline
  splits it and dead-letters (`processing_error`) the one event that still
  fails alone, after two more tries. A value the server rejects for itself
  (numeric out of range, invalid text, a violated constraint) is the event's
  fault. For the Redis projection of state PostgreSQL already committed, an
  answer such as WRONGTYPE (a key of ours that someone else rewrote with
  another type) is logged and the key skipped: the event is stored, and
  `rpcache replay` rewrites the key.

`RULES` is that table, first match wins; `tests/unit/test_errors.py` has one
row per rule. The README's "Failures: wait or dead letter" prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import asyncpg
import asyncpg.exceptions as pg_errors
import asyncpg.exceptions._base as pg_base
import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors


class RpcacheError(Exception):
    """Root of rpcache's own exceptions; `retriable` says whether waiting can help."""

    retriable: bool = False


class Verdict(StrEnum):
    WAIT = "wait"
    DEAD_LETTER = "dead letter"


@dataclass(frozen=True, slots=True)
class Rule:
    """Exceptions of `kind` (and, when given, whose message starts with `prefix`)."""

    kind: type[BaseException]
    verdict: Verdict
    why: str
    prefix: str | None = None
    when: Callable[[BaseException], bool] | None = None

    def matches(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.kind):
            return False
        if self.prefix is not None and not str(exc).startswith(self.prefix):
            return False
        return self.when is None or self.when(exc)


WAIT, DEAD_LETTER = Verdict.WAIT, Verdict.DEAD_LETTER

RULES: tuple[Rule, ...] = (
    # --- rpcache's own --------------------------------------------------------
    Rule(RpcacheError, WAIT, "rpcache's own error that says retrying helps", when=lambda e: e.retriable),  # type: ignore[attr-defined]
    Rule(RpcacheError, DEAD_LETTER, "rpcache's own error that says retrying cannot help"),
    # --- PostgreSQL (asyncpg); SQLSTATE classes from PostgreSQL's Appendix A ---
    Rule(pg_base.DataError, DEAD_LETTER, "asyncpg cannot encode a value of the event for its column"),
    Rule(pg_errors.DataError, DEAD_LETTER, "class 22: the server rejects a value (out of range, bad text)"),
    Rule(pg_errors.IntegrityConstraintViolationError, DEAD_LETTER, "class 23: a value violates a constraint"),
    Rule(asyncpg.PostgresConnectionError, WAIT, "class 08: the connection failed or was lost"),
    Rule(pg_errors.OperatorInterventionError, WAIT, "class 57: shutdown, restart, cannot connect now, cancelled"),
    Rule(pg_errors.InsufficientResourcesError, WAIT, "class 53: disk full, out of memory, too many connections"),
    Rule(pg_errors.TransactionRollbackError, WAIT, "class 40: deadlock or serialization failure"),
    Rule(pg_errors.ReadOnlySQLTransactionError, WAIT, "25006: read-only (a standby, or not yet primary after a failover)"),
    Rule(pg_errors.IdleInTransactionSessionTimeoutError, WAIT, "25P03: the server ended a slow transaction"),
    Rule(pg_errors.PostgresSystemError, WAIT, "class 58: an I/O error on the server"),
    Rule(pg_errors.LockNotAvailableError, WAIT, "55P03: a lock timeout"),
    Rule(pg_errors.InvalidCachedStatementError, WAIT, "0A000: a cached plan went stale after a schema change"),
    Rule(pg_errors.InvalidAuthorizationSpecificationError, WAIT, "class 28: credentials refused (an operator fixes them)"),
    Rule(pg_errors.InvalidCatalogNameError, WAIT, "3D000: the database does not exist (yet)"),
    Rule(pg_errors.DuplicatePreparedStatementError, WAIT, "42P05: a transaction pooler without DATABASE_POOLER=transaction"),
    Rule(pg_base.InternalClientError, WAIT, "asyncpg's protocol state after a killed connection"),
    Rule(asyncpg.InterfaceError, WAIT, "connection closed, pool closing, or a cancelled operation"),
    # --- Redis (redis-py) -------------------------------------------------------
    Rule(redis_errors.BusyLoadingError, WAIT, "LOADING: the server loads its data set"),
    Rule(redis_errors.TryAgainError, WAIT, "TRYAGAIN: a cluster slot is migrating"),
    Rule(redis_errors.ReadOnlyError, WAIT, "READONLY: a replica (after a failover)"),
    Rule(redis_errors.MasterDownError, WAIT, "MASTERDOWN: the replica lost its master"),
    Rule(redis_errors.ClusterDownError, WAIT, "CLUSTERDOWN: the cluster cannot serve the slot"),
    Rule(redis_errors.AskError, WAIT, "MOVED / ASK: the slot is served elsewhere (the slot map is refreshed)"),
    Rule(redis_errors.RedisClusterException, WAIT, "no node serves the slot, or none of the cluster answers"),
    Rule(redis_errors.OutOfMemoryError, WAIT, "OOM: at maxmemory under noeviction"),
    Rule(redis_errors.AuthenticationError, WAIT, "NOAUTH / WRONGPASS: credentials refused"),
    Rule(redis_errors.NoPermissionError, WAIT, "NOPERM: the ACL user may not run the command"),
    # After LOADING and the auth errors above: redis-py makes them its subclasses.
    Rule(redis_errors.ConnectionError, WAIT, "unreachable, reset, or max number of clients reached"),
    Rule(redis_errors.TimeoutError, WAIT, "no answer in time"),
    Rule(redis_errors.ResponseError, WAIT, "MISCONF: RDB snapshots fail, writes refused", prefix="MISCONF"),
    Rule(redis_errors.ResponseError, WAIT, "BUSY: a script or function is running", prefix="BUSY"),
    Rule(redis_errors.ResponseError, WAIT, "NOREPLICAS: min-replicas-to-write not met", prefix="NOREPLICAS"),
    Rule(redis_errors.ResponseError, DEAD_LETTER, "any other answer (WRONGTYPE, ERR): not fixed by waiting"),
    # --- Kafka (aiokafka) ---------------------------------------------------------
    Rule(kafka_errors.KafkaTimeoutError, WAIT, "delivery timed out: the brokers are away"),
    Rule(kafka_errors.ProducerClosed, WAIT, "the producer is stopping (worker shutdown)"),
    Rule(kafka_errors.KafkaError, WAIT, "Kafka marks the error retriable", when=lambda e: e.retriable),  # type: ignore[attr-defined]
    Rule(kafka_errors.KafkaError, DEAD_LETTER, "Kafka marks the error not retriable"),
    # --- the rest ---------------------------------------------------------------------
    Rule(TimeoutError, WAIT, "a timeout of ours"),  # before OSError, its base class
    Rule(OSError, WAIT, "a socket or file error"),
    Rule(BaseException, DEAD_LETTER, "anything else is a fault of the batch itself"),
)  # fmt: skip


def classify(exc: BaseException) -> Rule:
    """The first rule of `RULES` that matches `exc` (the last one matches everything)."""
    return next(rule for rule in RULES if rule.matches(exc))


def is_transient(exc: BaseException) -> bool:
    """True when waiting and trying again can make `exc` go away (verdict `wait`)."""
    return classify(exc).verdict is Verdict.WAIT
