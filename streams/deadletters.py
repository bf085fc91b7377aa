"""Dead letters: the rows we keep and the message we publish for each.

A dead letter is written to PostgreSQL in the same transaction as the batch
it came from (so it is never lost), then published to `{prefix}dead-letters`
from that table (an outbox): a crash between the two only delays the message.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from schemas.events import Rejection
from streams.sinks import postgres as pg
from streams.sinks.postgres import DeadLetterRow

log = logging.getLogger(__name__)

KAFKA_ORIGINAL_LIMIT = 256 * 1024
"""Bytes of the original value carried in the Kafka message; PostgreSQL keeps all."""

Publish = Callable[[str, bytes | None, bytes], Awaitable[None]]
"""Send (topic, key, value) and wait until the broker has it."""


def dead_letter_row(
    rejection: Rejection,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    original: bytes | None,
) -> DeadLetterRow:
    log.warning(
        "dead letter %s at %s[%d]@%d: %s",
        rejection.reason,
        topic,
        partition,
        offset,
        rejection.detail,
    )
    return DeadLetterRow(
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        reason=str(rejection.reason),
        detail=rejection.detail,
        event_id=rejection.event_id,
        original=original,
    )


def dead_letter_message(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The JSON published for one dead_letters row."""
    original: bytes = row["original"] or b""
    return orjson.dumps(
        {
            "reason": row["reason"],
            "detail": row["detail"],
            "source_topic": row["topic"],
            "partition": row["kafka_partition"],
            "offset": row["kafka_offset"],
            "event_id": row["event_id"],
            "key": row["message_key"].decode("utf-8", "replace") if row["message_key"] else None,
            "original": base64.b64encode(original[:KAFKA_ORIGINAL_LIMIT]).decode(),
            "original_size": len(original),
            "original_truncated": len(original) > KAFKA_ORIGINAL_LIMIT,
            "dead_lettered_at": (row["created_at"] or datetime.now(UTC)).isoformat(),
        }
    )


async def flush(pool: asyncpg.Pool, publish: Publish, topic: str, batch: int = 500) -> int:
    """Publish every unpublished dead letter, oldest first; return how many."""
    sent = 0
    while True:
        async with pool.acquire() as conn:
            rows = await pg.unpublished_dead_letters(conn, batch)
        if not rows:
            return sent
        for row in rows:
            await publish(topic, row["message_key"], dead_letter_message(row))
        async with pool.acquire() as conn:
            await pg.mark_dead_letters_published(conn, [r["id"] for r in rows])
        sent += len(rows)
