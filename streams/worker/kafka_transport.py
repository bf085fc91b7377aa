"""Faust's aiokafka transport: a configurable fetch wait, read_committed, and a
drain loop that waits on the flow once per fetched batch instead of per message.

Fetch wait (`KAFKA_FETCH_MAX_WAIT_MS`).

Faust hard-codes `fetch_max_wait_ms=1500` for its consumer. aiokafka keeps
one fetch request in flight per broker, and the broker holds a request whose
partitions have no new data for that long. While a worker catches up on a
backlog (after an outage, a deploy, or in `rpcache bench`), the partitions of
one topic are often caught up while another topic's still lag: the fetch for
the caught-up ones then parks for 1.5 s, and the lagging partitions, drained
in the meantime, wait behind it with nothing to deliver. Measured on a
preloaded backlog, Faust alone delivered twice as fast with 100 ms.

A shorter wait costs an empty fetch round trip every `KAFKA_FETCH_MAX_WAIT_MS`
per broker when idle, and never adds latency: a fetch returns as soon as any
of its partitions has data.

Isolation level. Faust reads `read_uncommitted` unless it runs its own
exactly-once transactions, so a producer that uses Kafka transactions (Java's
`transactional.id`, librdkafka's, aiokafka's `transactional_id`) would have
the events of its *aborted* transactions projected. rpcache consumes with
`read_committed`, as Kafka's documentation asks of consumers of transactional
producers: aborted records and transaction markers are skipped; messages of
non-transactional producers are unaffected.

The drain loop (issue 15). Faust's `Consumer._drain_messages` hands every
fetched message to the conductor through
`wait_first(callback(message), suspend_flow.wait())`: per message two tasks,
two more for the service's stopped/crashed events and an `asyncio.wait`, so
that a rebalance (which sets `suspend_flow`) can abandon a delivery blocked
on a full channel. Profiled, that is most of the worker's per-message cost
outside rpcache's own code. The override keeps Faust's loop (gap tracking,
`commit_every`, read offsets, and Faust's own `getmany`, whose round robin
stops at a flow change or a new generation) and moves the `wait_first` out
one level: one per fetched batch, around a coroutine that delivers the
batch's messages in order with a plain `await` (`drain_batch`).

What must not move into that wait is the fetch. The first step of Faust's
`getmany` generator is the fetch itself (`_wait_next_records`, which asks
the consumer thread for records and so moves the fetch position past them);
only when it returns does `getmany` look at the flow: stopped → seek back
to the committed offsets (`perform_seek`), yield nothing. A first version of
this override iterated the whole generator inside the cancellable wait: a
rebalance during a fetch cancelled the wait for it, the records the thread
then fetched were dropped with the position already past them, and the
chaos run "a second worker joins and leaves" lost 5 of 3 548 events. So
`drain_batch` awaits the generator's first step (the fetch and the first
record) outside any flow wait, exactly as Faust's loop does, and only the
delivery, whose remaining steps do no I/O, runs under the wait.

A rebalance mid-batch cancels the delivery where it blocks, where Faust's
per-message wait would have abandoned it; the messages after it are not
delivered, as Faust's `getmany` would not have yielded them once the flow
stopped; before the flow resumes Faust seeks every partition back to its
committed offset (`Recovery._resume_streams` → `perform_seek`), so nothing
is lost, and what is delivered again is deduplicated downstream by
offset (SPEC §5). The commit inside the loop is shielded, so a cancelled
delivery never cancels a commit half-way. Written for faust-streaming 0.15
(pyproject pins `<0.16`); `tests/unit/test_kafka_transport.py` fails when
Faust's `_drain_messages` or `getmany` changes, so the copy is re-read
against them before any upgrade.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message
from mode import Service

from streams.settings import get_settings


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher.
        consumer._fetch_max_wait_ms = get_settings().kafka_fetch_max_wait_ms
        consumer._isolation_level = "read_committed"
        return consumer


Fetched = tuple[TP, Message]


class FlowWaiter(Protocol):
    """What `drain_batch` needs of Faust's consumer (a mode `Service`)."""

    suspend_flow: Any
    """Set while a rebalance stops the flow (Faust's `Consumer.stop_flow`)."""

    async def wait_first(self, *coros: Any) -> Any: ...


async def drain_batch(
    consumer: FlowWaiter,
    batch: AsyncIterator[Fetched],
    deliver: Callable[[Fetched, AsyncIterator[Fetched]], Awaitable[None]],
) -> None:
    """Fetch one batch, then deliver it under one flow wait.

    `batch`: Faust's `getmany` generator. Its first step (the fetch, and the
    first record) is awaited here, outside any flow wait, as in Faust's own
    loop, so a rebalance never cancels a fetch (see the module docstring);
    `deliver(first, rest)` then runs under `wait_first(…, suspend_flow.wait())`
    and is cancelled where it blocks if the flow stops. The generator is
    closed either way. Raises what the fetch or `deliver` raise.
    """
    try:
        first = await anext(batch, None)
        if first is not None:
            await consumer.wait_first(deliver(first, batch), consumer.suspend_flow.wait())
    finally:
        await batch.aclose()  # type: ignore[attr-defined]


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust 0.15's drain loop with one flow wait per fetched batch (module docstring)."""
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = self.getmany(timeout=1.0)
                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop (Faust's comment)
                await self.sleep(0)
                if not self.should_stop:
                    await drain_batch(self, ait, self._deliver)
                unset_flag(flag_consumer_fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    async def _deliver(self, first: Fetched, rest: AsyncIterator[Fetched]) -> None:
        """Hand one fetched batch to the conductor, in order: Faust's per-message body
        without the per-message flow wait."""
        await self._deliver_one(*first)
        yield_every, since_yield = 100, 1
        async for tp, message in rest:
            since_yield += 1
            if since_yield > yield_every:
                await asyncio.sleep(0)
                since_yield = 0
            await self._deliver_one(tp, message)

    async def _deliver_one(self, tp: TP, message: Message) -> None:
        offset = message.offset
        r_offset = self._read_offset[tp]
        if r_offset is None or offset >= r_offset:
            gap = offset - (r_offset or 0)
            # We have a gap in income messages (Faust's comment)
            if gap > 1 and r_offset and self.app.topics.acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            commit_every = self._commit_every
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                # Shielded: a rebalance that cancels the delivery must not cut a commit
                # half-way. A commit that then fails is logged (nobody awaits it).
                commit = asyncio.ensure_future(self.commit())
                commit.add_done_callback(self._log_commit_failure)
                await asyncio.shield(commit)
            await self.callback(message)
            self._read_offset[tp] = offset
        else:
            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)

    def _log_commit_failure(self, commit: asyncio.Future[Any]) -> None:
        if not commit.cancelled() and commit.exception() is not None:
            self.log.error("Commit in the drain loop failed: %r", commit.exception())


class _ProducerBuffer(ProducerBuffer):
    """Faust's buffer of messages waiting to be produced, with a cheaper ebb check.

    The conductor awaits `wait_until_ebb` before every message it delivers;
    Faust's reads the `producer_threaded` setting through its settings
    registry each time (6.3 % of the Faust floor's samples, issue 15;
    streams/worker/faust_event_path.py). Here the setting is read once, and
    the unthreaded buffer's size is its pending queue's, as in Faust's `size`.
    Faust's own method still runs when the buffer is over its limit or the
    producer is threaded.
    """

    _threaded: bool | None = None

    async def wait_until_ebb(self) -> None:
        if self._threaded is None:
            self._threaded = bool(cast(Any, self.app).conf.producer_threaded)
        if self._threaded or self.pending.qsize() > self.max_messages:
            await super().wait_until_ebb()


class _Producer(driver.Producer):
    def __init__(self, transport: Any, **kwargs: Any) -> None:
        super().__init__(transport, **kwargs)
        buffer = _ProducerBuffer(loop=self.loop, beacon=self.beacon)
        if hasattr(self.buffer, "threaded_producer"):
            buffer.threaded_producer = self.buffer.threaded_producer
        buffer.app = self.app
        self.buffer = buffer


class Transport(driver.Transport):
    """`kafka://` as Faust's, with the consumer and producer above."""

    Consumer = _Consumer
    Producer = _Producer
