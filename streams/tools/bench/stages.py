"""The write path alone, stage by stage (`rpcache bench --only stages`).

The throughput run gives the worker's CPU per event and the Faust floor's;
their difference is rpcache's pipeline, but only as a difference of two
noisy runs, and as one figure. This benchmark runs `BatchPipeline.process`
in this process, without Kafka or Faust, on the throughput workload's own
messages (`workload.Workload`), against the run's real PostgreSQL and Redis,
and reports the CPU time per event of each step of `streams.write.pipeline`:

- **decode**: `decode_event`, the stored JSON, the `StoredEvent`s;
- **PostgreSQL**: the unit of work, client side (the handlers' reducers and
  the parameters asyncpg encodes, TLS included when the server offers it);
- **Redis**: packing the batch's commands and reading the replies;
- **rest**: what `process` spends around those (splitting, counting);
- **PostgreSQL server**: the CPU time of the local PostgreSQL cluster over
  each batch (`cpu.PostgresCpu`: backends of this database and the
  background processes), per event: what the same statements cost the
  server. None when PostgreSQL is not a local process.

Batches are what the worker takes when a backlog waits: `BATCH_MAX_EVENTS`
of one topic, the three topics in turn, each topic's messages spread over
its partitions by key as Kafka's producer does (per key in order). The first
batch of each topic warms up and is not counted; then the collector is set
as the worker sets it (`gc_policy.settle_after_start`). CPU time is the
process's (`time.process_time`): one pipeline runs at a time, so an await
inside a step counts only the event loop's own work besides it.
"""

from __future__ import annotations

import gc
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest

from schemas.keys import DEAD_LETTER_TOPIC, SOURCE_TOPICS, topic_name
from streams.projections import RedisOp
from streams.settings import Settings
from streams.store.base import DeadLetterRow, StoredEvent
from streams.store.migrate import migrate
from streams.tools.bench.cpu import PostgresCpu, cpu_delta
from streams.tools.bench.env import BenchEnv
from streams.tools.bench.workload import Workload
from streams.worker import gc_policy
from streams.worker.runtime import open_pool, open_targets
from streams.write.pipeline import BatchPipeline, RawMessage, _Persisted
from streams.write.registry import handlers

PARTITIONS = 8
"""Partitions per topic, as the stack creates them (`TOPIC_PARTITIONS`)."""


@dataclass
class StageCpu:
    """CPU seconds of each step, and the events they were spent on."""

    events: int = 0
    decode: float = 0.0
    postgres: float = 0.0
    redis: float = 0.0
    total: float = 0.0
    wall: float = 0.0
    server: float | None = None
    """PostgreSQL's CPU seconds over the batches (None: not a local server)."""


@dataclass(frozen=True, slots=True)
class StageFigure:
    """One topic's (or `all`) CPU per event of each step, in µs."""

    topic: str
    events: int
    decode_us: float
    postgres_us: float
    redis_us: float
    rest_us: float
    total_us: float
    wall_us: float
    """Wall time per event: the CPU plus the waits for PostgreSQL and Redis."""
    server_us: float | None = None
    """PostgreSQL's own CPU per event (server side); None when it is not local."""

    @classmethod
    def of(cls, topic: str, cpu: StageCpu) -> StageFigure:
        n = max(cpu.events, 1)

        def us(seconds: float) -> float:
            return round(seconds * 1e6 / n, 1)

        rest = cpu.total - cpu.decode - cpu.postgres - cpu.redis
        return cls(
            topic,
            cpu.events,
            us(cpu.decode),
            us(cpu.postgres),
            us(cpu.redis),
            us(rest),
            us(cpu.total),
            us(cpu.wall),
            None if cpu.server is None else us(cpu.server),
        )


@dataclass
class _Steps:
    counting: bool = False
    current: StageCpu = field(default_factory=StageCpu)


class TimedPipeline(BatchPipeline):
    """`BatchPipeline` with each step's CPU time added to `steps.current`."""

    steps: _Steps

    def _decode(
        self, messages: Sequence[RawMessage]
    ) -> tuple[list[StoredEvent], list[DeadLetterRow]]:
        started = time.process_time()
        try:
            return super()._decode(messages)
        finally:
            self.steps.current.decode += time.process_time() - started

    async def _persist(
        self,
        messages: Sequence[RawMessage],
        stored: list[StoredEvent],
        rejected: list[DeadLetterRow],
    ) -> _Persisted:
        started = time.process_time()
        try:
            return await super()._persist(messages, stored, rejected)
        finally:
            self.steps.current.postgres += time.process_time() - started

    async def _project(self, ops: list[RedisOp], count_retry: object) -> None:
        started = time.process_time()
        try:
            await super()._project(ops, count_retry)  # type: ignore[arg-type]
        finally:
            self.steps.current.redis += time.process_time() - started


def batches(
    run_prefix: str, workload: Workload, events: int, batch_max: int
) -> list[list[RawMessage]]:
    """`events` workload messages as the worker's agents take them from a backlog:
    per topic, `batch_max` at a time in partition order, the topics in turn."""
    per_topic: dict[str, list[RawMessage]] = defaultdict(list)
    next_offset: dict[tuple[str, int], int] = defaultdict(int)
    for m in workload.messages(events):
        topic = topic_name(run_prefix, m.topic)
        partition = zlib.crc32(m.key) % PARTITIONS
        offset = next_offset[(topic, partition)]
        next_offset[(topic, partition)] = offset + 1
        per_topic[topic].append(RawMessage(topic, partition, offset, m.key, m.value))
    chunks = [
        [ms[i : i + batch_max] for i in range(0, len(ms), batch_max)] for ms in per_topic.values()
    ]
    return [batch for turn in zip_longest(*chunks) for batch in turn if batch]


async def run_stages(
    base: Settings, run: str, redis_db: int, events: int, users: int, batch_max: int | None = None
) -> list[StageFigure]:
    """Run `events` workload events through the three pipelines in batches of
    `batch_max` (default: the settings' `BATCH_MAX_EVENTS`); one figure per
    topic and one for all (`all`). Raises RuntimeError if any event is
    dead-lettered: the workload is valid, so a dead letter means the batches
    were out of order."""
    env = await BenchEnv.create(base, run, "stages", redis_db)
    settings = env.settings
    pool = await open_pool(settings)
    targets = open_targets(settings)

    async def publish(topic: str, key: bytes | None, value: bytes) -> None:
        """Nothing to publish: a dead letter fails the run below."""

    threshold = gc.get_threshold()
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            server = PostgresCpu.find(conn)
            foreign = await server.foreign(conn) if server else set()
        steps = _Steps()
        pipelines: dict[str, TimedPipeline] = {}
        for handler in handlers(settings).values():
            pipeline = TimedPipeline(
                handler=handler,
                topic_prefix=settings.topic_prefix,
                consumer_group=settings.app_id,
                pool=pool,
                redis=targets,
                publish=publish,
                dead_letter_topic=topic_name(settings.topic_prefix, DEAD_LETTER_TOPIC),
                max_event_bytes=settings.max_event_bytes,
                max_audio_bytes=settings.voice_max_audio_bytes,
                max_backoff_s=settings.retry_max_backoff_s,
                max_clock_skew_s=settings.max_clock_skew_s,
            )
            pipeline.steps = steps
            pipelines[topic_name(settings.topic_prefix, handler.topic_suffix)] = pipeline
        todo = batches(settings.topic_prefix, Workload(run, users=users), events,
                       batch_max or settings.batch_max_events)  # fmt: skip
        first_of_topic = set({b[0].topic: i for i, b in reversed(list(enumerate(todo)))}.values())
        settled_at = max(first_of_topic) + 1
        by_topic: dict[str, StageCpu] = defaultdict(StageCpu)
        for i, batch in enumerate(todo):
            if i == settled_at:
                gc_policy.settle_after_start()  # as the worker, after its start-up
            topic = batch[0].topic
            steps.current = StageCpu() if i in first_of_topic else by_topic[topic]
            server_at = server.sample() if server else {}
            cpu_at, wall_at = time.process_time(), time.perf_counter()
            outcome = await pipelines[topic].process(batch)
            steps.current.total += time.process_time() - cpu_at
            steps.current.wall += time.perf_counter() - wall_at
            steps.current.events += outcome.messages
            if server:
                spent = cpu_delta(server_at, server.sample(), foreign)
                steps.current.server = (steps.current.server or 0.0) + spent
            if outcome.dead_letters:
                raise RuntimeError(f"stages: dead letters in a valid workload: {outcome.reasons}")
        total = StageCpu()
        for cpu in by_topic.values():
            for name in ("events", "decode", "postgres", "redis", "total", "wall"):
                setattr(total, name, getattr(total, name) + getattr(cpu, name))
            if cpu.server is not None:
                total.server = (total.server or 0.0) + cpu.server
        suffix = {topic_name(settings.topic_prefix, s): s for s in SOURCE_TOPICS}
        return [
            *(StageFigure.of(suffix[t], cpu) for t, cpu in by_topic.items()),
            StageFigure.of("all", total),
        ]
    finally:
        gc.unfreeze()  # the bench's own process goes on as it was
        gc.set_threshold(*threshold)
        await pool.close()
        await targets.aclose()
        await env.drop()
