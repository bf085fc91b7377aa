"""Faust's aiokafka transport: a configurable fetch wait, and read_committed.

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
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers import aiokafka as driver

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


class Transport(driver.Transport):
    """`kafka://` as Faust's, with the consumer above."""

    Consumer = _Consumer
