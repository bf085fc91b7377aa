"""Reads: `CacheReader` latency for concurrent simulated users, from Redis and from PostgreSQL.

Each simulated user is an asyncio task that, turn after turn, reads its
session, an AI response and a 100 KB voice clip, then thinks for 0.5 to 1.5
× `think_s` (a voice role-play turn takes seconds; a user who never pauses is
a load generator, not a user). Every read is timed with `perf_counter` around
the reader's call, so the figure includes the client library and the event
loop of the service, as a service would see it. Reads that start during the
first `warmup_s` (connections being opened) are not counted.

The same reads are then served by PostgreSQL: a second reader whose Redis is
a closed port, so its circuit breaker opens on the first read and every read
takes the fallback path (`streams.read.recompute`), as during a Redis outage.
With a local Redis Cluster, the same entries are then replayed into it from
PostgreSQL (design layout) and read again, source `redis cluster`: session
and user reads from replicas, AI and voice from masters, as the reader does
on a cluster (README, "Reads on a cluster").

A read the reader could not answer (`CacheUnavailableError`: neither Redis nor
PostgreSQL in time, e.g. PostgreSQL's pool saturated by 3 000 users) is a
figure of its level, `errors` by exception type, not the end of the run; its
time is not in the latency figures. Each level also keeps what the reader's
own counters moved by (`reader`: fallbacks, breaker openings, reads that
queued for a slot and how long, round trips given more time because the event
loop was late), which says why a level was served the way it was.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

from streams.read.clients import redis_client
from streams.read.fallback import CacheUnavailableError
from streams.read.reader import CacheReader
from streams.read.results import ReadResult
from streams.read.stats import ReaderStats
from streams.settings import Settings
from streams.tools.bench.stats import Latency

Kind = Literal["session", "ai", "voice"]
KINDS: tuple[Kind, ...] = ("session", "ai", "voice")
CLUSTER_READS = "redis cluster"
"""The source label of the reads from the local Redis Cluster (`Bench.reads_on_cluster`)."""
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"
"""Nothing listens on TCP port 1: every Redis call fails at once."""


@dataclass(frozen=True, slots=True)
class ReadTargets:
    """What the simulated users read (all present in Redis and PostgreSQL)."""

    sessions: list[str]
    prompts: list[str]
    voices: list[tuple[int, str]]


@dataclass
class ReadLevel:
    """One source at one concurrency."""

    source: str
    users: int
    seconds: float
    latency: dict[Kind, Latency] = field(default_factory=dict)
    sources: Counter[str] = field(default_factory=Counter)
    """Which source served the counted reads (all one source unless something is wrong)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Reads that raised instead of answering, by exception type (not in `latency`)."""
    reader: dict[str, float] = field(default_factory=dict)
    """How much the reader's counters (`READER_FIGURES`) moved during the level."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def reads(self) -> int:
        return sum(lat.n for lat in self.latency.values())

    @property
    def reads_per_s(self) -> float:
        return self.reads / self.seconds if self.seconds else 0.0


async def _user(
    reader: CacheReader,
    targets: ReadTargets,
    rng: random.Random,
    think_s: float,
    measure_from: float,
    until: float,
    samples: dict[Kind, list[float]],
    sources: Counter[str],
    errors: Counter[str],
) -> None:
    await asyncio.sleep(rng.uniform(0, think_s))  # users arrive spread over one turn
    turn = 0
    while time.perf_counter() < until:
        speaker, text = rng.choice(targets.voices)
        calls: list[tuple[Kind, Awaitable[ReadResult[Any]]]] = [
            ("session", reader.get_session(rng.choice(targets.sessions))),
            ("ai", reader.get_ai_response(rng.choice(targets.prompts))),
            ("voice", reader.get_voice(speaker, text)),
        ]
        # The first read after a think pays for the task waking up (~70 µs here):
        # each kind goes first in turn, so none carries that alone.
        first, turn = turn % len(calls), turn + 1
        for kind, call in calls[first:] + calls[:first]:  # coroutines run when awaited
            started = time.perf_counter()
            try:
                result = await call
            except CacheUnavailableError as exc:
                if started >= measure_from:
                    errors[type(exc).__name__] += 1
                continue
            if started >= measure_from:
                samples[kind].append(time.perf_counter() - started)
                sources[result.source] += 1
        await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)


async def run_level(
    reader: CacheReader,
    source: str,
    targets: ReadTargets,
    users: int,
    seconds: float,
    think_s: float = 1.0,
    warmup_s: float = 1.0,
    seed: int = 11,
) -> ReadLevel:
    """`users` concurrent users reading for `warmup_s + seconds`."""
    rng = random.Random(seed)
    samples: dict[Kind, list[float]] = {k: [] for k in KINDS}
    sources: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    before = reader.stats
    start = time.perf_counter()
    measure_from, until = start + warmup_s, start + warmup_s + seconds
    await asyncio.gather(
        *(
            _user(
                reader,
                targets,
                random.Random(rng.random()),
                think_s,
                measure_from,
                until,
                samples,
                sources,
                errors,
            )
            for _ in range(users)
        )
    )
    level = ReadLevel(source, users, seconds, sources=sources, errors=errors)
    level.latency = {k: Latency.of_seconds(v) for k, v in samples.items()}
    level.reader = reader_delta(before, reader.stats)
    return level


READER_FIGURES = (
    "fallbacks",
    "redis_errors",
    "breaker_opens",
    "queued",
    "queue_wait_s",
    "loop_late",
    "overloaded",
)
"""`ReaderStats` counters a level reports (the warm-up second included)."""


def reader_delta(before: ReaderStats, after: ReaderStats) -> dict[str, float]:
    """How much each of `READER_FIGURES` moved between two snapshots."""
    return {
        name: round(float(getattr(after, name)) - float(getattr(before, name)), 3)
        for name in READER_FIGURES
    }


def redis_reader(settings: Settings) -> CacheReader:
    """The reader as a service builds it: Redis first."""
    return CacheReader.from_settings(settings)


async def postgres_reader(settings: Settings) -> CacheReader:
    """A reader whose Redis never answers and whose breaker stays open: PostgreSQL serves."""
    pg_settings = settings.model_copy(update={"breaker_fail_max": 1, "breaker_reset_s": 3600.0})
    reader = CacheReader(
        pg_settings, master=redis_client(CLOSED_PORT_URL, settings.read_timeout_ms / 1000)
    )
    await reader.start()
    return reader


async def run_reads(
    settings: Settings,
    targets: ReadTargets,
    concurrency: tuple[int, ...],
    seconds: float,
    think_s: float = 1.0,
    sources: tuple[str, ...] = ("redis", "postgres"),
) -> list[ReadLevel]:
    """Every concurrency from each of `sources`, in that order: `redis` (the reader
    as `settings` build it: one Redis, or whatever topology they name), `postgres`
    (its fallback alone), or another label for the first kind (`redis cluster`).

    The benchmark process still holds the earlier phases' bookkeeping (hundreds
    of thousands of objects); frozen out of the garbage collector's reach, its
    full collections do not show up as read latency a service would not have.
    """
    gc.collect()
    gc.freeze()
    try:
        levels: list[ReadLevel] = []
        for source in sources:
            levels += await _run_source(settings, source, targets, concurrency, seconds, think_s)
        return levels
    finally:
        gc.unfreeze()


async def _run_source(
    settings: Settings,
    source: str,
    targets: ReadTargets,
    concurrency: tuple[int, ...],
    seconds: float,
    think_s: float,
) -> list[ReadLevel]:
    if source == "postgres":
        reader = await postgres_reader(settings)
        await reader.get_session(targets.sessions[0])  # opens the breaker
    else:
        reader = redis_reader(settings)
        await reader.start()
    try:
        return [
            await run_level(reader, source, targets, users, seconds, think_s)
            for users in concurrency
        ]
    finally:
        await reader.close()
