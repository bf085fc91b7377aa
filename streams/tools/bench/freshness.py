"""Freshness: from the moment a service produces an event to its value being readable in Redis.

A running worker; events of the workload are produced at a fixed rate, and
each event that is the first to project a key (a login, a session start, an
AI or voice miss) is a probe: its send time is taken just before
`producer.send` (so the producer's linger counts, as it does for a service).
Redis keyspace notifications (`__keyevent@<db>__:set` and `:hset`) tell when
the key is written; they are received by a child process of their own, so
that the producing event loop cannot delay the timestamps. Both sides read
CLOCK_MONOTONIC, which is one clock for every process of the machine.

A notification is sent once the command has executed, so the value is
readable at that instant: this is the freshness a reader sees, without the
bias of a polling interval.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

import redis as redis_sync
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from schemas.keys import topic_name
from streams.tools.bench.live import LiveWorker
from streams.tools.bench.stats import Latency
from streams.tools.bench.workload import Workload

NOTIFY_FLAGS = "Eh$"
"""Keyevent notifications for hash and string commands (HSET, SET)."""


@dataclass(frozen=True, slots=True)
class Freshness:
    rate: int
    """Events per second produced."""
    produced: int
    latency: Latency
    unseen: int
    """Probes whose key never appeared (0 unless something is wrong)."""


def _listen(
    url: str,
    options: dict[str, Any],
    db: int,
    ready: EventType,
    stop: EventType,
    out: Connection,
) -> None:
    """Child process: record when each key is first written (CLOCK_MONOTONIC)."""
    client = redis_sync.Redis.from_url(url, **options)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8
    pubsub.subscribe(f"__keyevent@{db}__:set", f"__keyevent@{db}__:hset")
    confirmed = 0
    while confirmed < 2:
        message = pubsub.get_message(timeout=1.0)
        confirmed += bool(message and message["type"] == "subscribe")
    ready.set()
    seen: dict[str, float] = {}
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.05)
        if message and message["type"] == "message":
            at = time.monotonic()
            seen.setdefault(message["data"].decode(), at)
    pubsub.close()
    client.close()
    out.send(seen)
    out.close()


class KeyWatcher:
    """The listening child process and the server setting it needs."""

    def __init__(self, redis: Redis, url: str, db: int, options: dict[str, Any]) -> None:
        """`options`: the TLS keyword arguments of `security.redis_options` for `url`."""
        self.redis, self.url, self.db = redis, url, db
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_listen,
            args=(url, options, db, self._ready, self._stop, send),
            daemon=True,
        )
        self._send = send
        self._previous: str | None = None

    async def __aenter__(self) -> KeyWatcher:
        config = await self.redis.config_get("notify-keyspace-events")
        self._previous = str(config.get("notify-keyspace-events", ""))
        flags = self._previous + "".join(f for f in NOTIFY_FLAGS if f not in self._previous)
        await self.redis.config_set("notify-keyspace-events", flags)
        self._process.start()
        self._send.close()
        if not await asyncio.to_thread(self._ready.wait, 30):
            raise TimeoutError("the keyspace listener did not subscribe")
        return self

    async def collect(self) -> dict[str, float]:
        """Stop listening; every key seen with the time of its first write."""
        self._stop.set()
        seen: dict[str, float] = await asyncio.to_thread(self._recv.recv)
        await asyncio.to_thread(self._process.join, 10)
        return seen

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._process.is_alive():
            self._process.terminate()
        if self._previous is not None:  # the server's setting as it was
            await self.redis.config_set("notify-keyspace-events", self._previous)


async def produce_at(
    producer: AIOKafkaProducer, prefix: str, workload: Workload, rate: int, seconds: float
) -> tuple[int, dict[str, float]]:
    """Produce `rate` events/s for `seconds`; (events sent, probe key → send time)."""
    total = int(rate * seconds)
    probes: dict[str, float] = {}
    pending = []
    start = time.monotonic()
    for sent, m in enumerate(workload.messages(total)):
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0.001:
            await asyncio.sleep(ahead)
        if m.creates is not None:
            probes[m.creates] = time.monotonic()
        pending.append(await producer.send(topic_name(prefix, m.topic), m.value, key=m.key))
    await asyncio.gather(*pending)
    return total, probes


async def measure(
    watcher: KeyWatcher,
    live: LiveWorker,
    workload: Workload,
    rate: int,
    seconds: float,
    settle_s: float = 60.0,
) -> Freshness:
    """One rate: produce, wait until the worker has stored it all, summarise."""
    produced, probes = await produce_at(live.producer, live.prefix, workload, rate, seconds)
    live.produced += produced
    await live.wait_drained(settle_s)
    seen = await watcher.collect()
    latencies = [seen[k] - t for k, t in probes.items() if k in seen]
    return Freshness(
        rate=rate,
        produced=produced,
        latency=Latency.of_seconds(latencies),
        unseen=len(probes) - len(latencies),
    )
