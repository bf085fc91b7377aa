"""The failure table (streams/errors.py): one example per rule, and its verdict."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import asyncpg.exceptions as pg_errors
import asyncpg.exceptions._base as pg_base
import pytest
import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors

from streams.errors import RULES, RpcacheError, Verdict, classify, is_transient

W, D = Verdict.WAIT, Verdict.DEAD_LETTER


class _RetriableError(RpcacheError):
    retriable = True


EXAMPLES: list[tuple[str, BaseException, Verdict]] = [
    # (rule's why, starts with; an exception as the library raises it; verdict)
    ("rpcache's own error that says retrying helps", _RetriableError("x"), W),
    ("rpcache's own error that says retrying cannot", RpcacheError("x"), D),
    ("asyncpg cannot encode", pg_base.DataError("invalid input for query argument $1"), D),
    ("class 22", pg_errors.NumericValueOutOfRangeError("bigint out of range"), D),
    ("class 23", pg_errors.NotNullViolationError("null value in column"), D),
    ("class 08", pg_errors.ConnectionDoesNotExistError("connection was closed"), W),
    ("class 57", pg_errors.AdminShutdownError("terminating connection"), W),
    ("class 53", pg_errors.DiskFullError("could not extend file"), W),
    ("class 40", pg_errors.DeadlockDetectedError("deadlock detected"), W),
    ("25006", pg_errors.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"), W),
    ("25P03", pg_errors.IdleInTransactionSessionTimeoutError("idle-in-transaction timeout"), W),
    ("class 58", pg_errors.PostgresIOError("could not write"), W),
    ("55P03", pg_errors.LockNotAvailableError("lock timeout"), W),
    ("0A000", pg_errors.InvalidCachedStatementError("cached plan must not change"), W),
    ("class 28", pg_errors.InvalidPasswordError("password authentication failed"), W),
    ("3D000", pg_errors.InvalidCatalogNameError('database "x" does not exist'), W),
    ("42P05", pg_errors.DuplicatePreparedStatementError('"__asyncpg_stmt_1__" already exists'), W),
    ("asyncpg's protocol state", pg_base.ProtocolError("unexpected message"), W),
    ("connection closed, pool closing", asyncpg.InterfaceError("pool is closing"), W),
    ("unreachable, reset", redis_errors.ConnectionError("Connection refused"), W),
    ("no answer in time", redis_errors.TimeoutError("Timeout reading"), W),
    ("LOADING", redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), W),
    ("TRYAGAIN", redis_errors.TryAgainError("Multiple keys request during rehashing"), W),
    ("READONLY", redis_errors.ReadOnlyError("You can't write against a read only replica."), W),
    ("MASTERDOWN", redis_errors.MasterDownError("Link with MASTER is down"), W),
    ("CLUSTERDOWN", redis_errors.ClusterDownError("The cluster is down"), W),
    ("MOVED / ASK", redis_errors.MovedError("3999 127.0.0.1:6402"), W),
    ("MOVED / ASK", redis_errors.AskError("3999 127.0.0.1:6402"), W),
    ("no node serves the slot", redis_errors.SlotNotCoveredError('Slot "5" not covered by the cluster'), W),
    ("no node serves the slot", redis_errors.RedisClusterException("Redis Cluster cannot be connected"), W),
    ("OOM", redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), W),
    ("NOAUTH / WRONGPASS", redis_errors.AuthenticationError("invalid username-password pair"), W),
    ("NOPERM", redis_errors.NoPermissionError("this user has no permissions to run 'hset'"), W),
    ("MISCONF", redis_errors.ResponseError("MISCONF Redis is configured to save RDB snapshots"), W),
    ("BUSY", redis_errors.ResponseError("BUSY Redis is busy running a script."), W),
    ("NOREPLICAS", redis_errors.ResponseError("NOREPLICAS Not enough good replicas to write."), W),
    ("any other answer", redis_errors.ResponseError("WRONGTYPE Operation against a key"), D),
    ("delivery timed out", kafka_errors.KafkaTimeoutError(), W),
    ("the producer is stopping", kafka_errors.ProducerClosed(), W),
    ("Kafka marks the error retriable", kafka_errors.NotLeaderForPartitionError(), W),
    ("Kafka marks the error not retriable", kafka_errors.MessageSizeTooLargeError(), D),
    ("a socket or file error", ConnectionResetError(104, "reset by peer"), W),
    ("a timeout of ours", TimeoutError(), W),
    ("anything else", KeyError("a bug"), D),
]  # fmt: skip


@pytest.mark.parametrize(("why", "exc", "verdict"), EXAMPLES, ids=[why for why, _, _ in EXAMPLES])
def test_each_rule_gives_its_verdict(why: str, exc: BaseException, verdict: Verdict) -> None:
    rule = classify(exc)
    assert rule.why.startswith(why), f"{exc!r} matched {rule.why!r}"
    assert rule.verdict is verdict
    assert is_transient(exc) is (verdict is Verdict.WAIT)


def test_every_rule_has_an_example() -> None:
    """A rule added to the table without a row here fails."""
    covered = {classify(exc).why for _, exc, _ in EXAMPLES}
    assert [r.why for r in RULES if r.why not in covered] == []


@pytest.mark.parametrize(
    "exc",
    [
        pg_errors.TooManyConnectionsError("sorry, too many clients already"),
        pg_errors.CannotConnectNowError("the database system is starting up"),
        pg_errors.QueryCanceledError("canceling statement due to statement timeout"),
        pg_errors.SerializationError("could not serialize access"),
        pg_errors.OutOfMemoryError("out of memory"),
        redis_errors.ConnectionError("max number of clients reached"),
        kafka_errors.KafkaConnectionError("no broker"),
    ],
    ids=repr,
)
def test_more_live_server_failures_wait(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pg_errors.StringDataRightTruncationError("value too long"),
        pg_errors.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        pg_errors.InvalidTextRepresentationError("invalid input syntax for type uuid"),
        pg_errors.UniqueViolationError("duplicate key"),
        ValueError("a bug"),
    ],
    ids=repr,
)
def test_value_faults_are_dead_lettered(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_the_readme_lists_every_rule() -> None:
    """The README's "Failures: wait or dead letter" table is this table."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert [r.why for r in RULES if f"| {r.verdict} | {r.why} |" not in readme] == []
