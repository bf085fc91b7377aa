"""The consume loop every agent shares: take a batch, hand it off, then ack.

`noack_take` leaves acknowledgement to us: a message is acked only after its
batch went through `BatchPipeline.process` (persisted and projected), so a
worker stopped or killed mid-batch never lets Faust commit past it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from streams.model import BatchOutcome
from streams.write.pipeline import RawMessage

log = logging.getLogger(__name__)


class BatchProcessor(Protocol):
    """What an agent hands its batches to: `streams.write.pipeline.BatchPipeline`
    (the benchmark's Faust floor hands them to one that discards them)."""

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome: ...


def raw_message(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
    )


async def consume(stream: Any, pipeline: BatchProcessor, max_events: int, within_s: float) -> None:
    async for events in stream.noack_take(max_events, within=within_s):
        outcome = await pipeline.process([raw_message(e) for e in events])
        for event in events:
            await stream.ack(event)
        log.debug("batch done: %s", outcome)
