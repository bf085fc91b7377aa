"""What a source topic's handler plugs into the pipeline.

A handler turns a batch of stored events into state changes (inside the
batch's unit of work, a `streams.store.base.Tx`: one PostgreSQL transaction)
and into the Redis writes that project the resulting state. The pipeline owns
ordering, retries and dead letters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from schemas.events import Rejection
from streams.projections import RedisOp
from streams.store.base import StoredEvent, Tx


@dataclass
class HandlerResult:
    redis_ops: list[RedisOp] = field(default_factory=list)
    rejections: list[tuple[StoredEvent, Rejection]] = field(default_factory=list)


class Handler(Protocol):
    topic_suffix: str

    async def apply(
        self,
        tx: Tx,
        new: list[StoredEvent],
        batch: list[StoredEvent],
        now: datetime,
    ) -> HandlerResult:
        """Apply `new` events to state; project everything `batch` touched.

        `batch` holds every valid event of the batch, duplicates included, so
        a redelivery after a crash re-projects what the crash left unwritten.
        """
        ...
