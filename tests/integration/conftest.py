"""Fixtures for tests against the real Kafka, Redis and PostgreSQL.

The stack must be up (`make test` runs `rpcache stack up` first): when Kafka,
Redis or PostgreSQL does not answer within a few seconds, every integration
test is skipped with one message naming them (failed under
RPCACHE_REQUIRE_STACK=1, which `make test` sets). Each test session gets its
own topic prefix, consumer group, PostgreSQL database and Redis database (under
a cluster topology, which has db 0 only: the local cluster, held by one session
at a time), so runs never see each other's data. Workers are real `rpcache
worker` processes, started and killed like an operator would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.keys import METRIC_WINDOWS, MetricName, metrics_key, stats_key
from streams.observe.check import check_kafka, check_redis
from streams.publisher import EventPublisher
from streams.security import redis_options
from streams.settings import Settings, get_settings
from streams.tools.stack.cluster import ClusterTopology, cluster_env, cluster_lock
from streams.tools.stack.common import StackError
from streams.tools.stack.sentinel import SentinelTopology, sentinel_env
from streams.worker.runtime import open_pool
from streams.worker.topics import ensure_topics
from tests import needs
from tests.integration.topology import (
    SENTINEL_DB,
    TOPOLOGY_ENV,
    RedisKeys,
    cluster_layout,
    family_env,
    redis_topology,
)

pytestmark = pytest.mark.integration
T = TypeVar("T")
RUN = uuid.uuid4().hex[:8]
LOG_DIR = Path(".cache/test-logs")


def test_redis(url: str, **tls: Any) -> Redis:
    """A client that reconnects by itself: some tests really restart Redis.

    `tls`: `streams.security.redis_options` of a `rediss://` URL.
    """
    return Redis.from_url(
        url,
        **tls,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0), retries=20),
        retry_on_error=[RedisConnectionError],
    )


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


STACK_PING_S = 3.0
"""How long the servers get to answer before the integration tests are skipped."""


async def silent_servers(base: Settings, timeout_s: float = STACK_PING_S) -> list[str]:
    """The stack's servers that do not answer within `timeout_s`, each with why (concurrently)."""
    quick = base.model_copy(update={"check_timeout_s": timeout_s})

    async def postgres() -> str | None:
        url = _with_db(base.database_url.get_secret_value(), "postgres")
        try:
            async with asyncio.timeout(timeout_s):
                conn = await asyncpg.connect(url, timeout=timeout_s)
                await conn.close()
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def check(probe: Awaitable[Any]) -> str | None:
        result = await probe
        return None if result.ok else str(result.detail)

    names = ("Kafka", "Redis", "PostgreSQL")
    addresses = (
        base.kafka_bootstrap_servers,
        urlsplit(base.redis_url.get_secret_value()).netloc.rpartition("@")[2],
        urlsplit(base.database_url.get_secret_value()).netloc.rpartition("@")[2],
    )
    why = await asyncio.gather(check(check_kafka(quick)), check(check_redis(quick)), postgres())
    return [
        f"{n} ({a}): {w.rstrip('.')}" for n, a, w in zip(names, addresses, why, strict=True) if w
    ]


@pytest.fixture(scope="session", autouse=True)
async def stack_answers() -> None:
    """Skip (or fail) every integration test at once when the stack is not up.

    Without this, each test would wait for the servers (ensure_topics retries
    forever) until its timeout.
    """
    silent = await silent_servers(get_settings())
    if silent:
        needs.missing(
            "the stack does not answer: "
            + "; ".join(silent)
            + ". Start it with `.venv/bin/rpcache stack up` (or `make stack-up`)"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under RPCACHE_REDIS_TOPOLOGY=sentinel, cluster or cluster-design, skip the
    integration tests of modules that do not declare it in REDIS_TOPOLOGIES (they
    check keys on REDIS_URL)."""
    try:
        topology = redis_topology()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if topology == "single":
        return
    skip = pytest.mark.skip(reason=f"assumes one Redis (REDIS_URL), not {TOPOLOGY_ENV}={topology}")
    for item in items:
        module = getattr(item, "module", None)
        if item.get_closest_marker("integration") and topology not in getattr(
            module, "REDIS_TOPOLOGIES", ("single",)
        ):
            item.add_marker(skip)


def on_one_redis() -> pytest.MarkDecorator:
    """For a test of a module that runs on every topology but needs one Redis itself."""
    topology = redis_topology()
    return pytest.mark.skipif(
        topology != "single", reason=f"about one Redis, not {TOPOLOGY_ENV}={topology}"
    )


@pytest.fixture(scope="session")
def cluster_held() -> Iterator[None]:
    """Under a cluster topology, the local cluster for this session alone (`cluster_lock`:
    the session flushes every master); nothing otherwise."""
    if cluster_layout(redis_topology()) is None:
        yield
        return
    with cluster_lock(ClusterTopology(get_settings()).home):
        yield


@pytest.fixture(scope="session")
def test_env(cluster_held: None) -> dict[str, str]:
    """Environment of the workers and of the test process for this run.

    Under RPCACHE_REDIS_TOPOLOGY=sentinel the key families are on the local
    Sentinel topology (started here when it does not run), db SENTINEL_DB;
    under `cluster` / `cluster-design` on the local Redis Cluster (started here
    when it does not run), db 0, REDIS_CLUSTER_LAYOUT `hash` / `design`.
    REDIS_URL (db 15) then holds none of them.
    """
    base = get_settings()
    db_url = _with_db(base.database_url.get_secret_value(), f"rpcache_test_{RUN}")
    redis_url = base.redis_url.get_secret_value().rsplit("/", 1)[0] + "/15"
    families: dict[str, str] = {}
    topology = redis_topology()
    layout = cluster_layout(topology)
    if topology == "sentinel":
        try:
            SentinelTopology(base).up()
        except StackError as exc:
            needs.missing(f"the sentinel topology does not start: {exc}")
        families = sentinel_env(SENTINEL_DB)
    elif layout is not None:
        try:
            ClusterTopology(base).up()
        except StackError as exc:
            needs.missing(f"the local Redis Cluster does not start: {exc}")
        families = {**cluster_env(), "REDIS_CLUSTER_LAYOUT": layout}
    return {
        "TOPIC_PREFIX": f"test-{RUN}.",
        "APP_ID": f"rpcache-test-{RUN}",
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        **families,
        "WORKER_WEB_ENABLED": "false",
        "SESSION_SWEEP_INTERVAL_S": "1",
        "BATCH_WITHIN_MS": "20",
        "KAFKA_BOOTSTRAP_SERVERS": base.kafka_bootstrap_servers,
    }


@pytest.fixture(scope="session")
def settings(test_env: dict[str, str]) -> Settings:
    return Settings(**{k.lower(): v for k, v in test_env.items()})


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[None]:
    """A fresh database for the run, dropped at the end."""
    admin_url = _with_db(get_settings().database_url.get_secret_value(), "postgres")
    name = urlsplit(settings.database_url.get_secret_value()).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture(scope="session")
async def pool(settings: Settings, database: None) -> AsyncIterator[asyncpg.Pool]:
    pool = await open_pool(settings)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis_keys(settings: Settings) -> AsyncIterator[RedisKeys]:
    """This run's keys, each on its family's target; emptied before and after the run
    (on a cluster: every master, `cluster_held`)."""
    keys = RedisKeys.from_settings(settings)
    await keys.flushdb()
    yield keys
    await keys.flushdb()
    await keys.aclose()


@pytest.fixture(scope="session")
async def redis(settings: Settings, redis_keys: RedisKeys) -> AsyncIterator[Redis]:
    """REDIS_URL's db: every family's target with one Redis (emptied by `redis_keys`)."""
    client = test_redis(settings.redis_url.get_secret_value())
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
async def topics(settings: Settings) -> None:
    await ensure_topics(settings)


@pytest.fixture(scope="session")
async def publisher(settings: Settings, topics: None) -> AsyncIterator[EventPublisher]:
    async with EventPublisher.from_settings(settings) as pub:
        yield pub


class WorkerProcess:
    """One `rpcache worker` child process with its log file."""

    COMMAND = (sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info")

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        command: tuple[str, ...] = COMMAND,
        cwd: Path | None = None,
    ) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR.resolve() / f"{RUN}-{name}.log"
        self.cwd = cwd
        self.env = {**os.environ, **env}
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout_s: float = 60) -> None:
        """Until Faust says the worker is ready (and partitions are assigned)."""
        start = len(self.log_text().split("[^Worker]: Ready")) - 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()[-3000:]
            if len(self.log_text().split("[^Worker]: Ready")) - 1 > start:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="session")
def worker_factory(
    test_env: dict[str, str], database: None, topics: None
) -> Iterator[Callable[[str], WorkerProcess]]:
    made: list[WorkerProcess] = []

    def make(name: str) -> WorkerProcess:
        w = WorkerProcess(test_env, name)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


@pytest.fixture(scope="session")
async def worker(
    worker_factory: Callable[[str], WorkerProcess], pool: asyncpg.Pool
) -> AsyncIterator[WorkerProcess]:
    """The shared worker most tests publish to."""
    w = worker_factory("main")
    w.start()
    await w.wait_ready()
    yield w


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    timeout_s: float = 30,
    interval_s: float = 0.1,
) -> T:
    """Poll `probe` until `check` holds; return the last value or fail with it."""
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not check(value):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met after {timeout_s}s; last value: {value!r:.2000}"
            )
        await asyncio.sleep(interval_s)
        value = await probe()
    return value


async def stored_count(pool: asyncpg.Pool, event_ids: list[str]) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", event_ids
        )
    )


@dataclass
class IsolatedRun:
    """A worker with a database, Redis db and topics of its own (figures start at 0)."""

    env: dict[str, str]
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    """REDIS_URL's db."""
    keys: RedisKeys
    """The run's keys on their families' targets (REDIS_URL's db with one Redis)."""
    worker: WorkerProcess
    publisher: EventPublisher


@asynccontextmanager
async def isolated_run(
    base_env: dict[str, str], name: str, redis_db: int, cwd: Path | None = None, **extra: str
) -> AsyncIterator[IsolatedRun]:
    """`redis_db` is REDIS_URL's db, and that of the family targets `base_env` sets
    (the sentinel run's), unless `extra` sets them; those are emptied like REDIS_URL's.

    A cluster target of `base_env` (db 0 only) is not moved: the run shares it with
    the shared worker, keys distinct by their ids; for the keys every run writes
    (the day's stats, the metrics), see `alone_on_shared_keys`."""
    db = f"rpcache_test_{RUN}_{name}"
    moved = {k: v for k, v in family_env(base_env, redis_db).items() if k not in extra}
    env = {
        **base_env,
        "TOPIC_PREFIX": f"test-{RUN}-{name}.",
        "APP_ID": f"rpcache-test-{RUN}-{name}",
        "DATABASE_URL": _with_db(base_env["DATABASE_URL"], db),
        "REDIS_URL": base_env["REDIS_URL"].rsplit("/", 1)[0] + f"/{redis_db}",
        **moved,
        **extra,
    }
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    admin_url = _with_db(get_settings().database_url.get_secret_value(), "postgres")
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    owner = urlsplit(settings.database_url.get_secret_value()).username
    await conn.execute(f'CREATE DATABASE "{db}"' + (f' OWNER "{owner}"' if owner else ""))
    await conn.close()
    await ensure_topics(settings)
    pool = await open_pool(settings)
    redis_url = settings.redis_url.get_secret_value()
    redis = test_redis(redis_url, **redis_options(settings, redis_url))
    await redis.flushdb()
    keys = RedisKeys.from_settings(settings)
    if moved:
        await keys.flushdb()
    worker = WorkerProcess(env, name, cwd=cwd)
    worker.start()
    try:
        await worker.wait_ready()
        async with EventPublisher.from_settings(settings) as publisher:
            yield IsolatedRun(env, settings, pool, redis, keys, worker, publisher)
    finally:
        worker.stop()
        await redis.flushdb()
        await redis.aclose()
        if moved:
            await keys.flushdb()
        await keys.aclose()
        await pool.close()
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


@asynccontextmanager
async def alone_on_shared_keys(
    worker: WorkerProcess, keys: RedisKeys, settings: Settings
) -> AsyncIterator[None]:
    """Around an isolated run whose family targets are the shared worker's (a cluster
    topology: `isolated_run`): the keys that are not anybody's by id, today's stats
    hash and the metrics sorted sets, become the run's alone.

    The shared worker is stopped (SIGTERM) so that its stats timer does not rewrite
    the stats hash, those keys are deleted, and after the run deleted again and the
    worker restarted (it resumes from its committed offsets). Nothing is done where
    the isolated run has targets of its own (single, sentinel).
    """
    if cluster_layout(redis_topology()) is None:
        yield
        return
    day = datetime.now(settings.tz).date()
    metrics = [metrics_key(m, w) for m in get_args(MetricName) for w in METRIC_WINDOWS]
    shared = [stats_key(day), *metrics]
    assert worker.stop() == 0, worker.log_text()[-3000:]
    await keys.delete(*shared)
    try:
        yield
    finally:
        await keys.delete(*shared)
        worker.start()
        await worker.wait_ready()


async def read_alerts(
    settings: Settings, rule: str, want: int, linger_s: float = 2.0
) -> list[dict[str, Any]]:
    """Alerts of `rule` on `{prefix}alerts`, once `want` arrived and `linger_s` more passed.

    Lingering shows that nothing else arrives (alerts are sent once per crossing).
    """
    consumer = AIOKafkaConsumer(
        f"{settings.topic_prefix}alerts",
        bootstrap_servers=settings.kafka_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    seen: list[dict[str, Any]] = []
    try:

        async def read() -> int:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                seen.extend(m for m in (orjson.loads(x.value) for x in msgs) if m["rule"] == rule)
            return len(seen)

        await eventually(read, lambda n: n >= want, timeout_s=30)
        for _ in range(int(linger_s / 0.5)):
            await read()
    finally:
        await consumer.stop()
    return seen


async def rpcache_check(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`rpcache check` in a child process with `env`: (exit status, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "check", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


# --- private redis-server processes --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of this test only, on a free port, memory only."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.workdir = workdir
        self.argv = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--repl-diskless-sync-delay", "0",
            *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True, socket_timeout=2)

    def spawn(self) -> None:
        with (self.workdir / f"redis-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

    async def start(self) -> None:
        """Spawn the server and wait until it answers PING."""
        self.spawn()
        assert self.proc is not None
        client = self.client()
        try:
            deadline = time.monotonic() + 10
            while True:
                assert self.proc.poll() is None, f"redis-server on {self.port} exited"
                with suppress(Exception):  # not up yet
                    if await client.ping():
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on {self.port} did not answer")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[list[PrivateRedis]]:
    """Servers the test starts; every one is killed at the end, whatever happened."""
    servers: list[PrivateRedis] = []
    yield servers
    for s in servers:
        s.kill()
