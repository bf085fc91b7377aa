"""The Faust floor: the worker's consumer, transport and agent loop, with nothing behind.

`rpcache bench` runs this app as a worker process (`python -m faust -A
streams.tools.bench.faust_floor worker`) on the same preloaded topics as
rpcache's worker: the same Faust settings (`faust_options`), the same Kafka
transport (the drain-loop override included), the same agent loop
(`agents.consume.consume`: `noack_take`, then an ack per event), but every
batch is discarded. Its CPU time per event is what Faust costs before
rpcache does any work, so the worker's figure minus this one is rpcache's
own pipeline (decode, PostgreSQL, Redis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust

from agents.consume import consume
from schemas.keys import AGENT_TOPICS
from streams.model import BatchOutcome
from streams.settings import get_settings
from streams.worker import gc_policy
from streams.worker.faust_options import faust_options, raw_topic
from streams.worker.kafka_transport import Transport as KafkaTransport
from streams.write.pipeline import RawMessage

settings = get_settings()


class FloorApp(faust.App):
    """A Faust app on rpcache's Kafka transport, with the worker's collector settings."""

    def _new_transport(self) -> Any:
        return KafkaTransport(self.conf.broker_consumer, self)

    async def on_started(self) -> None:
        await super().on_started()
        if not self.should_stop:
            gc_policy.settle_after_start()  # as the worker does (streams/app.py)


class Discard:
    """A batch processor that keeps nothing (`agents.consume.BatchProcessor`)."""

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        return BatchOutcome(messages=len(messages))


app = FloorApp(settings.app_id, **faust_options(settings))


def _agent(name: str) -> Any:
    async def agent(stream: Any) -> None:
        await consume(stream, Discard(), settings.batch_max_events, settings.batch_within_ms / 1000)

    agent.__name__ = agent.__qualname__ = f"{name}_agent"
    return agent


for _name, _suffix in AGENT_TOPICS.items():
    app.agent(raw_topic(app, settings.topic_prefix, _suffix), name=_name)(_agent(_name))
