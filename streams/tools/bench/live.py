"""A worker that keeps running while the benchmark produces to it (freshness, memory, reads)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import asyncpg
from aiokafka import AIOKafkaProducer

from streams.database import asyncpg_options
from streams.security import redis_from_settings
from streams.store import progress
from streams.tools.bench.env import BenchEnv, WorkerProcess
from streams.tools.bench.kafka import fast_producer, send_all
from streams.tools.bench.workload import Message


class LiveWorker:
    """A started worker, a producer to its topics, and whether it has caught up."""

    def __init__(self, env: BenchEnv, log_path: Path, loop: str | None = None) -> None:
        self.env = env
        self.worker = WorkerProcess(env.env, log_path, loop=loop)
        self.redis = redis_from_settings(env.settings)
        self.producer: AIOKafkaProducer = fast_producer(env.settings, linger_ms=5)
        self.produced = 0
        """Events sent to the worker's topics so far (all acknowledged)."""
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None

    @property
    def prefix(self) -> str:
        return self.env.settings.topic_prefix

    async def __aenter__(self) -> LiveWorker:
        self.worker.start()
        await self.worker.wait_ready()
        self._conn = await asyncpg.connect(
            self.env.settings.database_url.get_secret_value(),
            **asyncpg_options(self.env.settings),
        )
        await self.producer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.producer.stop()
        self.stop_worker()
        if self._conn is not None:
            await self._conn.close()
        await self.redis.aclose()

    def stop_worker(self) -> None:
        """Stop the worker (the reads need no worker, and it would compete for CPU)."""
        self.worker.stop()

    async def publish(self, messages: Iterable[Message]) -> int:
        sent = await send_all(self.producer, self.prefix, messages)
        self.produced += sent
        return sent

    async def drained(self) -> bool:
        """True once PostgreSQL has stored every event produced so far."""
        assert self._conn is not None
        if not self.worker.alive():
            raise RuntimeError(f"the worker exited:\n{self.worker.log_tail()}")
        done = await progress.messages_done(self._conn, self.env.settings.app_id)
        return done >= self.produced

    async def wait_drained(self, timeout_s: float, settle_s: float = 0.3) -> None:
        """Until every produced event is stored, plus `settle_s` for the Redis write."""
        deadline = time.monotonic() + timeout_s
        while not await self.drained():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not catch up in {timeout_s} s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle_s)
