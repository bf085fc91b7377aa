"""The drain-loop override (streams/worker/kafka_transport.py).

`drain_batch` is driven here by a real mode `Service` (the base of Faust's
consumer, whose `wait_first` the override uses) and an async generator shaped
like Faust's `getmany`: its first step is the fetch. The rule under test is
the one whose absence lost events in chaos: a rebalance (`suspend_flow` set)
during a fetch must not cancel the fetch; during a delivery it must stop the
delivery where it blocks.

The digests fail when faust-streaming changes `Consumer._drain_messages` or
`Consumer.getmany`: re-read Faust's new code against the override (offsets,
gaps, acks, commits, flow checks, where the fetch happens) before updating.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from mode import Service
from mode.utils.locks import Event

from streams.worker.kafka_transport import Fetched, Transport, drain_batch

FAUST_SHA256 = {
    "_drain_messages": "8f35dd7a11144daa6ec9a3739a497b03a9dd6b57cca18aa861bb4a549400fc68",
    "getmany": "e486c434b7928ee8dc33eb66f8ad03adae289861dcec23f4cbd767ccc3c38148",
}
"""sha256 of faust-streaming 0.15.3's `Consumer` methods the override relies on."""


@pytest.mark.parametrize("method", sorted(FAUST_SHA256))
def test_faust_is_the_one_the_override_was_written_for(method: str) -> None:
    source = textwrap.dedent(inspect.getsource(getattr(Consumer, method)))
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_SHA256[method], (
        f"Faust's Consumer.{method} changed: compare it with streams/worker/kafka_transport.py"
    )


def test_the_worker_consumer_uses_the_override() -> None:
    assert Transport.Consumer._drain_messages is not Consumer._drain_messages


class FakeConsumer(Service):
    """A mode Service with Faust's flow event, and a getmany-shaped batch."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = Event()
        self.fetch_gate = asyncio.Event()
        self.delivery_gate = asyncio.Event()
        self.delivery_gate.set()
        self.fetch_done = False
        self.fetch_cancelled = False
        self.closed = False
        self.delivered: list[int] = []

    async def batch(self, offsets: list[int]) -> AsyncIterator[Fetched]:
        try:
            try:
                await self.fetch_gate.wait()  # the fetch: records leave the consumer thread
            except asyncio.CancelledError:
                self.fetch_cancelled = True
                raise
            self.fetch_done = True
            for offset in offsets:
                yield Any, offset  # type: ignore[misc]
        finally:
            self.closed = True

    async def deliver(self, first: Fetched, rest: AsyncIterator[Fetched]) -> None:
        await self._one(first)
        async for item in rest:
            await self._one(item)

    async def _one(self, item: Fetched) -> None:
        await self.delivery_gate.wait()  # a full channel blocks here
        self.delivered.append(item[1])  # type: ignore[arg-type]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_whole_batch_is_delivered_in_order_and_the_batch_closed() -> None:
    consumer = FakeConsumer()
    consumer.fetch_gate.set()
    await drain_batch(consumer, consumer.batch([5, 6, 7]), consumer.deliver)
    assert consumer.delivered == [5, 6, 7]
    assert consumer.closed


async def test_an_empty_fetch_delivers_nothing() -> None:
    consumer = FakeConsumer()
    consumer.fetch_gate.set()
    await drain_batch(consumer, consumer.batch([]), consumer.deliver)
    assert consumer.delivered == []
    assert consumer.closed


async def test_a_rebalance_during_the_fetch_does_not_cancel_it() -> None:
    consumer = FakeConsumer()
    drain = asyncio.create_task(drain_batch(consumer, consumer.batch([1, 2]), consumer.deliver))
    await _settle()
    consumer.suspend_flow.set()  # the rebalance starts while the fetch is in flight
    await _settle()
    assert not consumer.fetch_cancelled
    consumer.fetch_gate.set()
    await asyncio.wait_for(drain, 1)
    assert consumer.fetch_done
    assert not consumer.fetch_cancelled


async def test_a_rebalance_during_delivery_stops_it_where_it_blocks() -> None:
    consumer = FakeConsumer()
    consumer.fetch_gate.set()
    consumer.delivery_gate.clear()
    drain = asyncio.create_task(drain_batch(consumer, consumer.batch([1, 2, 3]), consumer.deliver))
    await _settle()
    assert consumer.delivered == []  # blocked on the first message
    consumer.suspend_flow.set()
    await asyncio.wait_for(drain, 1)  # returns: Faust seeks back before the flow resumes
    consumer.delivery_gate.set()
    await _settle()
    assert consumer.delivered == []
    assert consumer.closed
