"""The publisher keeps the order of its callers, even concurrent ones, on a real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.publisher import EventPublisher
from streams.settings import Settings

pytestmark = pytest.mark.integration


async def test_concurrent_publishes_land_in_call_order(settings: Settings) -> None:
    """Tasks started one after the other reach the partition in that order.

    Senders that arrive while earlier ones wait (for the topic's metadata, or
    for a full 16 KB batch to drain, as during a broker outage) overtake them
    in aiokafka alone: without the publisher's ordering this test sees
    [32, 33, 34, 35, 46, ...]. For the worker a session.started overtaken by
    its own activity is a dead letter.
    """
    topic = f"test-order-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    count = 400
    padding = b"x" * 6000
    async with EventPublisher(settings.kafka_servers, "") as publisher:
        sends = []
        for i in range(count):  # new senders keep arriving while batches drain
            payload = b"%d:" % i + padding
            sends.append(asyncio.create_task(publisher.publish_raw(topic, b"u1", payload)))
            await asyncio.sleep(0)
        await asyncio.gather(*sends)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen: list[int] = []
        while len(seen) < count:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                seen += [int(r.value.split(b":", 1)[0]) for r in records if r.value]
    finally:
        await consumer.stop()
    assert seen == list(range(count))
