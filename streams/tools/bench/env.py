"""Isolated resources for one benchmark: a database, a Redis db, topics, a worker.

Every benchmark of a run gets a PostgreSQL database, a Redis database and a
consumer group of its own (and a topic prefix unless it deliberately reads
another benchmark's topics), so figures never mix, and a run never touches
the data of the demo, the tests or another run. Everything is dropped at the
end. The worker is a real `python -m streams.cli worker` child process, as an
operator runs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from streams.database import asyncpg_options
from streams.security import kafka_options, redis_from_settings
from streams.settings import Settings
from streams.store import admin
from streams.tools.bench.cpu import CpuTimes, tree_cpu
from streams.worker.topics import ensure_topics

READY_MARK = "[^Worker]: Ready"
"""What Faust logs once the worker runs (at log level info)."""


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (same server, user and options)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def with_redis_db(url: str, db: int) -> str:
    """`url` pointing at Redis database number `db`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@dataclass
class BenchEnv:
    """One benchmark's database, Redis db, topic prefix and consumer group."""

    name: str
    env: dict[str, str]
    """Environment variables of this benchmark's worker (and of its Settings)."""
    settings: Settings
    database: str
    admin_url: str

    @classmethod
    async def create(
        cls,
        base: Settings,
        run: str,
        name: str,
        redis_db: int,
        *,
        topic_prefix: str | None = None,
        **extra: str,
    ) -> BenchEnv:
        """A fresh database and an empty Redis db; topics created when missing."""
        database = f"rpcache_bench_{run}_{name}"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": base.kafka_bootstrap_servers,
            "TOPIC_PREFIX": topic_prefix or f"bench-{run}-{name}.",
            "APP_ID": f"rpcache-bench-{run}-{name}",
            "DATABASE_URL": with_database(base.database_url.get_secret_value(), database),
            "REDIS_URL": with_redis_db(base.redis_url.get_secret_value(), redis_db),
            "WORKER_WEB_ENABLED": "false",
            "WORKER_DATA_DIR": str(Path(base.stack_dir) / f"bench-{run}" / name),
            "BUSINESS_TZ": base.business_tz,
            **extra,
        }
        settings = settings_of(env)
        await asyncio.to_thread(Path(settings.worker_data_dir).mkdir, parents=True, exist_ok=True)
        admin_url = with_database(base.database_url.get_secret_value(), "postgres")
        conn = await asyncpg.connect(admin_url, **asyncpg_options(settings))
        try:
            await admin.recreate_database(conn, database)
        finally:
            await conn.close()
        redis = redis_from_settings(settings)
        try:
            await redis.flushdb()
        finally:
            await redis.aclose()
        await ensure_topics(settings)
        return cls(name, env, settings, database, admin_url)

    def settings_with(self, **extra: str) -> Settings:
        """This benchmark's settings with `extra` environment variables on top."""
        return settings_of({**self.env, **extra})

    async def drop(self) -> None:
        """Drop the database and empty the Redis db (topics: `delete_topics`)."""
        conn = await asyncpg.connect(self.admin_url, **asyncpg_options(self.settings))
        try:
            await admin.drop_database(conn, self.database)
        finally:
            await conn.close()
        redis = redis_from_settings(self.settings)
        try:
            await redis.flushdb()
        finally:
            await redis.aclose()


def settings_of(env: dict[str, str]) -> Settings:
    """Settings from environment-variable names and values (which win over the
    process environment, as for any `Settings`)."""
    return Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]


async def delete_topics(settings: Settings, prefix: str) -> None:
    """Delete every topic named `prefix…`: a full run leaves hundreds of MB behind."""
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


class WorkerProcess:
    """A `python -m streams.cli worker` child process with its log file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        loop: str | None = None,
        processes: int = 1,
        app: str | None = None,
    ) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.loop = loop
        self.processes = processes
        self.app = app
        """Another Faust app to run (`faust -A <app> worker`) instead of rpcache's worker."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        """time.time() when the process was launched."""

    @property
    def command(self) -> list[str]:
        if self.app is not None:  # on the worker's event loop (WORKER_LOOP), as `worker` runs
            loop = self.loop or self.env.get("WORKER_LOOP", "uvloop")
            return [sys.executable, "-m", "faust", "--loop", "aio" if loop == "asyncio" else loop,
                    "-A", self.app, "worker", "--loglevel", "info", "--without-web"]  # fmt: skip
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"]
        if self.processes > 1:
            cmd += ["--processes", str(self.processes)]
        return [*cmd, "--loop", self.loop] if self.loop else cmd

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        log.close()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout_s: float = 90) -> None:
        """Until Faust logs that the worker runs; fails early if it exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the worker exited:\n{self.log_tail()}")
            if READY_MARK in self.log_path.read_text(errors="replace"):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")

    def cpu_times(self) -> CpuTimes:
        """CPU seconds (user + system) of the worker and its children (`--processes`),
        by pid; none before it started."""
        return tree_cpu(self.proc.pid) if self.proc is not None else {}

    def peak_rss_mb(self) -> float:
        """The kernel's high-water mark of the worker's resident memory (VmHWM);
        with several processes, the sum of theirs (the supervisor's included)."""
        if self.proc is None:
            return float("nan")
        pids = [self.proc.pid, *child_pids(self.proc.pid)]
        return sum(vm_hwm_mb(pid) for pid in pids)

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux); none when unreadable."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of `pid` in MiB, from /proc (Linux)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return parse_vm_hwm_mb(status)


def parse_vm_hwm_mb(status: str) -> float:
    """The `VmHWM:  123456 kB` line of /proc/<pid>/status, in MiB."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
