"""Kafka plumbing of the benchmark: a fast preloading producer and plain consumers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.keys import SOURCE_TOPICS, topic_name
from streams.security import kafka_options
from streams.settings import Settings
from streams.tools.bench.workload import Message

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Broker `message.max.bytes` of the local stack (a 700 KiB clip in base64 fits)."""


def fast_producer(settings: Settings, linger_ms: int = 10) -> AIOKafkaProducer:
    """A producer for bulk preloading: large batches, acks from the leader only.

    Preloading is not what is measured, it only has to outrun the consumers;
    the events are the same bytes a roleplay service's `EventPublisher` sends.
    """
    return AIOKafkaProducer(
        **kafka_options(settings),
        acks=1,
        linger_ms=linger_ms,
        max_batch_size=1024 * 1024,
        max_request_size=MAX_MESSAGE_BYTES,
    )


async def send_all(
    producer: AIOKafkaProducer, prefix: str, messages: Iterable[Message], window: int = 5000
) -> int:
    """Send without awaiting each acknowledgement; wait for them `window` at a time.

    Returns how many the broker acknowledged (all of them, or it raises).
    """
    pending: list[asyncio.Future[object]] = []
    sent = 0
    for m in messages:
        pending.append(await producer.send(topic_name(prefix, m.topic), m.value, key=m.key))
        if len(pending) >= window:
            await asyncio.gather(*pending)
            sent += len(pending)
            pending = []
    await asyncio.gather(*pending)
    return sent + len(pending)


def source_topics(prefix: str) -> list[str]:
    return [topic_name(prefix, suffix) for suffix in SOURCE_TOPICS]


def plain_consumer(
    settings: Settings, group: str | None, auto_commit: bool | None = None
) -> AIOKafkaConsumer:
    """An aiokafka consumer sized for the stack's largest messages.

    Offsets are auto-committed when it has a group, unless `auto_commit` is False
    (the consumer then calls `commit()` itself).
    """
    return AIOKafkaConsumer(
        **kafka_options(settings),
        group_id=group,
        enable_auto_commit=group is not None if auto_commit is None else auto_commit,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=64 * 1024 * 1024,
    )
