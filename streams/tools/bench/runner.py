"""`rpcache bench`: the whole run, in order, each benchmark isolated.

1. throughput: preload the workload once; the ceiling, our worker (one
   process, then one per core with `--processes`), the hand-batched baseline
   and the naive baseline consume it in turn, each with a consumer, database
   and Redis db of its own (each Redis db is emptied before the next run
   fills one, so the 1 GB `maxmemory` of the stack never evicts a key being
   counted);
2. the write path alone (`stages.py`): CPU per event of each step of the
   pipeline, in this process, against the real PostgreSQL and Redis;
3. a live worker: freshness at each rate, then the memory data sets
   (sessions, AI responses, 100 KB voice clips), then, with the worker
   stopped, the reads of those same entries, from Redis, from PostgreSQL, and
   (replayed into it) from the local Redis Cluster;
4. everything dropped: databases, Redis dbs, topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode

from streams.cluster_masters import cluster_masters, wait_replicated
from streams.read.replay import replay
from streams.redis_targets import RedisTargets
from streams.security import redis_options
from streams.settings import Settings
from streams.tools.bench import freshness as fresh
from streams.tools.bench import throughput as tp
from streams.tools.bench.env import BenchEnv, delete_topics
from streams.tools.bench.kafka import fast_producer, send_all
from streams.tools.bench.live import LiveWorker
from streams.tools.bench.memory import MemoryFigure, mean_key_bytes, used_memory
from streams.tools.bench.reads import CLUSTER_READS, ReadTargets, run_reads
from streams.tools.bench.report import Results, build_report
from streams.tools.bench.sink import run_sink
from streams.tools.bench.stages import run_stages
from streams.tools.bench.workload import (
    DataSet,
    Expected,
    Workload,
    ai_misses,
    clip_of,
    open_sessions,
    voice_misses,
)
from streams.tools.stack.cluster import ClusterTopology, cluster_env, cluster_lock
from streams.tools.stack.common import StackError
from streams.worker.runtime import open_pool

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
PHASES = ("throughput", "stages", "freshness", "memory", "reads", "sink")


@dataclass(frozen=True)
class BenchConfig:
    mode: str
    events: int
    users: int
    baseline_cap_s: float
    rates: tuple[int, ...]
    freshness_s: float
    sessions: int
    ai_entries: int
    voice_entries: int
    concurrency: tuple[int, ...]
    read_s: float
    think_s: float = 1.0
    voice_bytes: int = 100 * 1024
    timeout_s: float = 900.0
    sink_batches: int = 20
    sink_rounds: int = 5
    stage_events: int = 60_000


QUICK = BenchConfig(
    mode="quick",
    events=20_000,
    users=400,
    baseline_cap_s=8.0,
    rates=(500, 2000),
    freshness_s=4.0,
    sessions=2_000,
    ai_entries=1_000,
    voice_entries=100,
    concurrency=(30, 300, 3000),
    read_s=3.0,
    sink_batches=10,
    sink_rounds=3,
    stage_events=12_000,
)
FULL = BenchConfig(
    mode="full",
    events=200_000,
    users=4_000,
    baseline_cap_s=45.0,
    rates=(500, 2000, 5000),
    freshness_s=15.0,
    sessions=10_000,
    ai_entries=5_000,
    voice_entries=300,
    concurrency=(30, 300, 3000),
    read_s=10.0,
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def default_processes() -> int:
    """One worker process per core, at most one per partition of a topic (4)."""
    return max(1, min(os.cpu_count() or 1, 4))


class Bench:
    """One run: its id, its log directory and its Redis dbs."""

    def __init__(
        self,
        base: Settings,
        config: BenchConfig,
        *,
        redis_db: int,
        progress: Progress,
        loop: str | None = None,
        processes: int | None = None,
    ) -> None:
        self.base = base
        self.config = config
        self.processes = processes if processes is not None else default_processes()
        """Worker processes of the second throughput run (1: that run is skipped)."""
        self.run = uuid.uuid4().hex[:6]
        self.redis_db = redis_db
        self.progress = progress
        self.loop = loop
        self.logs = Path(base.stack_dir) / f"bench-{self.run}"
        self.results = Results(mode=config.mode, machine=machine())
        self.results.machine["config"] = asdict(config)
        self.results.machine["worker_loop"] = loop or base.worker_loop
        self.results.machine["worker_processes"] = self.processes

    async def run_all(self, phases: tuple[str, ...] = PHASES) -> dict[str, Any]:
        if "throughput" in phases:
            await self.throughput()
        if "stages" in phases:
            self.progress("the write path alone, stage by stage (no Kafka, no Faust)")
            self.results.stages = await run_stages(
                self.base, self.run, self.redis_db, self.config.stage_events, self.config.users
            )
        if {"freshness", "memory", "reads"} & set(phases):
            await self.live(phases)
        if "sink" in phases:
            self.progress("Redis sink alone: one node, the cluster, redis-py's cluster pipeline")
            self.results.sink = await run_sink(
                self.base, self.redis_db, self.config.sink_batches, self.config.sink_rounds
            )
        return build_report(self.results)

    @contextlib.asynccontextmanager
    async def _cluster(self, what: str) -> AsyncIterator[bool]:
        """Whether the local Redis Cluster runs (started if needed, and stopped again at
        the end if this started it); False when it cannot be started (`what` is
        skipped, and said so). Holds `cluster_lock` throughout."""
        topology = ClusterTopology(self.base)
        with contextlib.ExitStack() as held:  # not while a test session flushes it
            try:
                await asyncio.to_thread(held.enter_context, cluster_lock(topology.home, 600))
            except TimeoutError as exc:
                self.progress(f"the Redis Cluster is in use, {what} skipped: {exc}")
                yield False
                return
            was_running = topology.running()
            try:
                await asyncio.to_thread(topology.up)
            except StackError as exc:
                self.progress(f"no Redis Cluster, {what} skipped: {exc}")
                yield False
                return
            try:
                yield True
            finally:
                if not was_running:
                    await asyncio.to_thread(topology.down)

    async def _ours_on_cluster(self, prefix: str, expected: Expected) -> None:
        """One worker with every key family on the local Redis Cluster (design layout),
        on the same preloaded topics."""
        c, r = self.config, self.results
        async with self._cluster("its throughput run is") as running:
            if not running:
                return
            env = await BenchEnv.create(
                self.base, self.run, "cluster", self.redis_db, topic_prefix=prefix, **cluster_env()
            )
            try:
                async with _cluster_for_run(env.settings):
                    self.progress("ours: one worker, every key family on the Redis Cluster")
                    r.ours_cluster = await tp.run_ours(
                        env,
                        expected,
                        c.events,
                        self.logs / "throughput-cluster.log",
                        c.timeout_s,
                        self.loop,
                    )
            finally:
                await env.drop()

    # --- 1. throughput --------------------------------------------------------------
    async def throughput(self) -> None:
        c, r = self.config, self.results
        env = await BenchEnv.create(self.base, self.run, "tp", self.redis_db)
        prefix = env.settings.topic_prefix
        try:
            expected = await self._preload(env, prefix)
            self.progress("ceiling: consume + decode only")
            r.ceiling = await tp.run_ceiling(env, prefix, c.events, c.timeout_s)
            self.progress(f"ours: worker until PostgreSQL and Redis hold all {c.events:,}")
            r.ours = await tp.run_ours(
                env, expected, c.events, self.logs / "throughput-worker.log", c.timeout_s, self.loop
            )
            await env.drop()  # frees Redis for the next copy
            r.faust_floor = await self._on_topics(
                "floor",
                prefix,
                self.redis_db,
                "Faust floor: the worker's agents and acks, batches discarded",
                lambda e: tp.run_faust_floor(
                    e, prefix, c.events, self.logs / "throughput-floor.log", c.timeout_s
                ),
            )
            if self.processes > 1:
                r.ours_multi = await self._on_topics(
                    "multi",
                    prefix,
                    self.redis_db,
                    f"ours: the same with `rpcache worker --processes {self.processes}`",
                    lambda e: tp.run_ours(
                        e,
                        expected,
                        c.events,
                        self.logs / "throughput-workers.log",
                        c.timeout_s,
                        self.loop,
                        processes=self.processes,
                    ),
                )
            await self._ours_on_cluster(prefix, expected)
            r.batched = await self._on_topics(
                "batched",
                prefix,
                self.redis_db + 1,
                f"hand-batched baseline: getmany ≤ {tp.BATCH_RECORDS:,},"
                " executemany + pipeline per batch",
                lambda e: tp.run_batched(e, prefix, c.events, c.timeout_s),
            )
            r.baseline = await self._on_topics(
                "naive",
                prefix,
                self.redis_db + 1,
                f"naive baseline: per-event consumer (at most {c.baseline_cap_s:.0f} s)",
                lambda e: tp.run_baseline(e, prefix, c.events, c.baseline_cap_s),
            )
        finally:
            await env.drop()
            await delete_topics(self.base, prefix)

    async def _preload(self, env: BenchEnv, prefix: str) -> Expected:
        """Produce the workload's events once, for every throughput run."""
        c, r = self.config, self.results
        workload = Workload(self.run, users=c.users)
        self.progress(f"preloading {c.events:,} events")
        producer = fast_producer(env.settings)
        await producer.start()
        started = time.monotonic()
        try:
            await send_all(producer, prefix, workload.messages(c.events))
        finally:
            await producer.stop()
        expected = workload.expected
        r.workload = {
            "events": c.events,
            "users": c.users,
            "types": dict(expected.types),
            "audio_mb": round(expected.audio_bytes / 1e6, 1),
            "preload_s": round(time.monotonic() - started, 2),
        }
        r.workload.update(_hit_rates(workload))
        return expected

    async def _on_topics(
        self,
        name: str,
        prefix: str,
        redis_db: int,
        what: str,
        run: Callable[[BenchEnv], Awaitable[tp.Throughput]],
    ) -> tp.Throughput:
        """`run` on an env of its own (database, Redis db, consumer group) reading the
        preloaded topics `prefix…`; the env dropped afterwards."""
        env = await BenchEnv.create(self.base, self.run, name, redis_db, topic_prefix=prefix)
        try:
            self.progress(what)
            return await run(env)
        finally:
            await env.drop()

    # --- 3. a live worker: freshness, memory, reads -------------------------------------
    async def live(self, phases: tuple[str, ...]) -> None:
        env = await BenchEnv.create(self.base, self.run, "live", self.redis_db + 2)
        try:
            self.progress("live worker: starting")
            async with LiveWorker(env, self.logs / "live-worker.log", self.loop) as live:
                if "freshness" in phases:
                    await self.freshness(live)
                targets = None
                if {"memory", "reads"} & set(phases):
                    targets = await self.memory(live)
                self.results.live_worker_peak_rss_mb = live.worker.peak_rss_mb()
                live.stop_worker()
                if "reads" in phases and targets is not None:
                    await self.reads(env.settings, targets)
                    await self.reads_on_cluster(env, targets)
        finally:
            await env.drop()
            await delete_topics(self.base, env.settings.topic_prefix)

    async def freshness(self, live: LiveWorker) -> None:
        c = self.config
        for rate in c.rates:
            self.progress(f"freshness at {rate:,} events/s for {c.freshness_s:.0f} s")
            workload = Workload(f"{self.run}f{rate}", users=max(100, rate // 2), seed=rate)
            settings = live.env.settings
            url = settings.redis_url.get_secret_value()
            watcher = fresh.KeyWatcher(
                live.redis, url, self.redis_db + 2, redis_options(settings, url)
            )
            async with watcher:
                result = await fresh.measure(watcher, live, workload, rate, c.freshness_s)
            self.results.freshness.append(result)

    async def memory(self, live: LiveWorker) -> ReadTargets:
        """Project each data set and measure what it adds; return them as read targets."""
        c, r = self.config, self.results
        await live.wait_drained(c.timeout_s, settle_s=1.0)
        sessions = open_sessions(self.run, c.sessions)
        self.progress(f"memory: {c.sessions:,} active sessions")
        r.sessions = await self._project(live, sessions, c.sessions)
        ai = ai_misses(self.run, c.ai_entries, sessions.sessions)
        self.progress(f"memory: {c.ai_entries:,} AI responses")
        r.ai_entries = await self._project(live, ai, c.ai_entries)
        voice = voice_misses(self.run, c.voice_entries, sessions.sessions, clip_of(c.voice_bytes))
        self.progress(f"memory: {c.voice_entries:,} voice clips of {c.voice_bytes // 1024} KB")
        r.voice_entries = await self._project(live, voice, c.voice_entries)
        return ReadTargets(sessions.sessions, ai.prompts, voice.voices)

    async def _project(self, live: LiveWorker, data: DataSet, entries: int) -> MemoryFigure:
        before = await used_memory(live.redis)
        await live.publish(data.messages)
        await live.wait_drained(self.config.timeout_s, settle_s=0.5)
        after = await used_memory(live.redis)
        keys = data.keys()
        missing = len(keys) - await tp.count_existing(live.redis, keys)
        if missing:
            raise RuntimeError(f"{missing} of {len(keys)} keys missing after projection")
        main_keys = [k for k in keys if not k.startswith("user:")]
        return MemoryFigure(entries, after - before, await mean_key_bytes(live.redis, main_keys))

    async def reads(self, settings: Settings, targets: ReadTargets) -> None:
        c = self.config
        self.progress(
            f"reads: {', '.join(map(str, c.concurrency))} users × {c.read_s:.0f} s,"
            " Redis then PostgreSQL"
        )
        self.results.reads = await run_reads(settings, targets, c.concurrency, c.read_s, c.think_s)

    async def reads_on_cluster(self, env: BenchEnv, targets: ReadTargets) -> None:
        """The same reads from the local Redis Cluster (design layout), after a replay
        of `env`'s database into it and a WAIT for its replicas."""
        c = self.config
        async with self._cluster("its reads are") as running:
            if not running:
                return
            settings = env.settings_with(**cluster_env())
            async with _cluster_for_run(settings) as redis:
                self.progress("reads: replaying the same entries into the Redis Cluster")
                pool = await open_pool(settings)
                try:
                    await replay(pool, redis, settings, show_progress=False)
                finally:
                    await pool.close()
                await _wait_replicas(redis)
                self.progress(
                    f"reads: {', '.join(map(str, c.concurrency))} users × {c.read_s:.0f} s,"
                    " Redis Cluster"
                )
                self.results.reads += await run_reads(
                    settings, targets, c.concurrency, c.read_s, c.think_s, sources=(CLUSTER_READS,)
                )


def _hit_rates(workload: Workload) -> dict[str, float]:
    e = workload.expected
    return {
        "ai_hit_rate": round(e.hit_rate("ai.response", len(e.ai_keys)), 3),
        "voice_hit_rate": round(e.hit_rate("voice.synthesized", len(e.voice_keys)), 3),
    }


@contextlib.asynccontextmanager
async def _cluster_for_run(settings: Settings) -> AsyncIterator[RedisTargets]:
    """The Redis targets of `settings` for one bench run on the cluster: every master
    emptied (FLUSHALL: a cluster has db 0 only) and without `maxmemory`; after the run,
    failed or not, emptied again, then its `maxmemory` restored (in that order, so
    the masters do not first evict down to the cap what is about to go)."""
    targets = RedisTargets.from_settings(settings)
    try:
        await _flush_cluster(targets)
        async with _no_eviction(targets):
            try:
                yield targets
            finally:
                await _flush_cluster(targets)
    finally:
        await targets.aclose()


@contextlib.asynccontextmanager
async def _no_eviction(targets: RedisTargets) -> AsyncIterator[None]:
    """`maxmemory 0` (no limit) on every cluster master for the run, restored after.

    The throughput run ends when every key it wrote is there, and the design's
    256 MB per master evicts voice clips of a full run (365 MB of audio; seen:
    the run waited out its timeout with the voice master at 94 % of
    maxmemory). The reads replay the live run's database, freshness clips
    included, and a clip evicted is a read served by PostgreSQL (seen: 3 % at
    30 users). One Redis gets the same room from the stack's 1 GB."""
    saved: list[tuple[RedisCluster, ClusterNode, str]] = []
    try:
        for _, client in targets.distinct():
            if isinstance(client, RedisCluster):
                for master in await cluster_masters(client):
                    config = await client.config_get("maxmemory", target_nodes=master.node)
                    saved.append((client, master.node, str(config["maxmemory"])))
                    await client.config_set("maxmemory", 0, target_nodes=master.node)
        yield
    finally:
        for client, node, value in saved:
            await client.config_set("maxmemory", value, target_nodes=node)


async def _flush_cluster(targets: RedisTargets) -> None:
    for _, client in targets.distinct():
        if isinstance(client, RedisCluster):
            await client.flushall(target_nodes=RedisCluster.PRIMARIES)


async def _wait_replicas(targets: RedisTargets) -> None:
    """Until every cluster replica has what its master holds (5 s at most per master):
    session reads go to replicas, and a key still on its way would be read from
    PostgreSQL. A replica still behind then is logged, not fatal."""
    for _, client in targets.distinct():
        if isinstance(client, RedisCluster):
            for master, (acked, want) in (await wait_replicated(client)).items():
                if acked < want:  # the reads still run: the table's "served by" will show it
                    log.warning("master %s: %d of %d replicas caught up", master, acked, want)
