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
that a rebalance (which sets `suspend_flow`) can abandon a delivery blocked on
a full or suspended channel. The override below keeps every line of Faust's
loop (gap tracking, `commit_every`, read offsets, the round-robin `getmany`
that itself stops at a flow change or a new generation) and moves the
`wait_first` out one level: one per fetched batch, around a coroutine that
delivers the batch's messages in order with a plain `await`. A rebalance
mid-batch cancels the delivery where it blocks, exactly where Faust's per-
message wait would have abandoned it; the messages after it in the batch are
not delivered, as Faust's getmany would not have yielded them once the flow
stopped; after the rebalance Faust seeks every partition back to its
committed offset (`perform_seek`), so nothing is lost and nothing is
delivered twice out of order. The commit inside the loop is shielded, so a
cancelled delivery never cancels a commit half-way. Written for
faust-streaming 0.15 (pyproject pins `<0.16`);
`tests/unit/test_kafka_transport.py` fails when Faust's own method changes,
so the copy is re-read against it before any upgrade.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
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


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust 0.15's drain loop with one flow wait per fetched batch (see above)."""
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
                    await self.wait_first(self._deliver(ait), self.suspend_flow.wait())
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

    async def _deliver(self, ait: AsyncIterator[tuple[TP, Message]]) -> None:
        """Hand one fetched batch to the conductor, in order: Faust's per-message body."""
        callback = self.callback
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        async for tp, message in ait:
            num_since_yield += 1
            if num_since_yield > yield_every:
                await sleep(0)
                num_since_yield = 0
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await asyncio.shield(self.commit())
                await callback(message)
                set_read_offset(tp, offset)
            else:
                self.log.dev(
                    "DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value
                )


class Transport(driver.Transport):
    """`kafka://` as Faust's, with the consumer above."""

    Consumer = _Consumer
