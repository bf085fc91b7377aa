"""Dead letters: the rows we keep and the message we publish for each.

A dead letter is written to PostgreSQL in the same transaction as the batch
it came from (so it is never lost), then published to `{prefix}dead-letters`
from that table (an outbox): a crash between the two only delays the message.

Flushes run side by side (each agent's pipeline after a batch with dead
letters, the 30 s timer, every worker process), so each one claims the rows
it publishes (`FOR UPDATE SKIP LOCKED`) and marks them in the same
transaction: with nothing failing, every row is published exactly once. A
crash or a failed send between publishing and the commit leaves the rows
unmarked, and they go out again (at least once) with the same
`dead_letter_id` (schemas/messages.py).
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime

import asyncpg

from schemas.events import Rejection
from schemas.messages import (
    KAFKA_KEY_LIMIT,
    KAFKA_ORIGINAL_LIMIT,
    TEXT_LIMIT,
    DeadLetterMessage,
    dead_letter_id,
)
from streams import model
from streams.store.base import DeadLetterRow, Store, StoredDeadLetter
from streams.store.postgres_store import PostgresStore

log = logging.getLogger(__name__)

Publish = model.Publish


def stored_text(text: str) -> str:
    """`text` as PostgreSQL's `text` can hold it, cut at `TEXT_LIMIT` characters.

    A rejected message's own strings (its event_id, a detail quoting it) may hold
    what made it bad: U+0000, which PostgreSQL's text type refuses ("invalid byte
    sequence for encoding UTF8: 0x00"), or a lone surrogate, which is not UTF-8.
    Written as they are, the batch's transaction failed and every event of it went
    through the slow one-by-one path, the bad one ending as a processing_error
    without its id. Each such character becomes U+FFFD, as undecodable key bytes
    do (schemas.messages.DeadLetterMessage.key).
    """
    cut = text[:TEXT_LIMIT]
    return cut.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


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
        detail=stored_text(rejection.detail),
        event_id=None if rejection.event_id is None else stored_text(rejection.event_id),
        original=original,
    )


def message_key(row: StoredDeadLetter) -> bytes | None:
    """The dead-letter message's Kafka key: the original key, cut at `KAFKA_KEY_LIMIT`
    bytes. An uncut key of a few MB made the broker refuse the message
    (MessageSizeTooLargeError) on every flush, and every later dead letter waited
    behind it; PostgreSQL's dead_letters.message_key keeps it whole."""
    return None if row.message_key is None else bytes(row.message_key[:KAFKA_KEY_LIMIT])


def dead_letter_message(row: StoredDeadLetter) -> DeadLetterMessage:
    """The message published for one dead_letters row (its `to_json()` is the value).

    Bounded whatever the original was: `original` cut at KAFKA_ORIGINAL_LIMIT
    bytes, the key at KAFKA_KEY_LIMIT, the event_id and detail at TEXT_LIMIT
    characters (each \\uXXXX-escaped control character is 6 bytes of JSON), so
    the message stays under 1 MB, Kafka's default `message.max.bytes`.
    """
    original: bytes = row.original or b""
    key = message_key(row)
    return DeadLetterMessage(
        dead_letter_id=dead_letter_id(row.topic, row.kafka_partition, row.kafka_offset, row.reason),
        reason=row.reason,
        detail=row.detail[:TEXT_LIMIT],
        source_topic=row.topic,
        partition=row.kafka_partition,
        offset=row.kafka_offset,
        event_id=None if row.event_id is None else row.event_id[:TEXT_LIMIT],
        key=key.decode("utf-8", "replace") if key is not None else None,
        key_size=len(row.message_key or b""),
        original=base64.b64encode(original[:KAFKA_ORIGINAL_LIMIT]).decode(),
        original_size=len(original),
        original_truncated=len(original) > KAFKA_ORIGINAL_LIMIT,
        dead_lettered_at=row.created_at or datetime.now(UTC),
    )


async def flush(store: Store | asyncpg.Pool, publish: Publish, topic: str, batch: int = 500) -> int:
    """Publish every unpublished dead letter nobody else is publishing; return how many.

    `store`: the write path's store (a pool: the PostgreSQL one on it).
    Per claim of up to `batch` rows, one unit of work (a transaction):
    1. lock the oldest unpublished rows no other flush holds (SKIP LOCKED);
    2. publish each, waiting for the broker;
    3. mark them published; the commit releases them.
    Any failure rolls the claim back: the rows stay unpublished for the next
    flush (a row sent before the failure is sent again, same dead_letter_id).
    Returns when no unclaimed row is left; rows another flush holds are its.
    """
    if isinstance(store, asyncpg.Pool):
        store = PostgresStore(store)
    sent = 0
    while True:
        async with store.transaction() as tx:
            # 1. claim
            rows = await tx.claim_unpublished_dead_letters(batch)
            if not rows:
                return sent
            # 2. publish
            for row in rows:
                await publish(topic, message_key(row), dead_letter_message(row).to_json())
            # 3. mark (committed on leaving the block)
            await tx.mark_dead_letters_published([r.id for r in rows])
        sent += len(rows)
