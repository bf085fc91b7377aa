"""How far a worker got: the counts the demo and the benchmark poll while they wait,
and check at the end (what landed, what was dead-lettered)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import asyncpg

from streams.store.postgres import Connection

Queryable: TypeAlias = "Connection | asyncpg.Pool"
"""A connection, or a pool that lends one per statement."""


async def schema_created(conn: Queryable) -> bool:
    """Whether a worker has migrated this database yet."""
    return bool(await conn.fetchval("SELECT to_regclass('consumer_positions') IS NOT NULL"))


async def messages_done(conn: Queryable, group: str) -> int:
    """Messages of `group` whose effects are stored: the sum over its partitions of
    last_offset + 1 (what a fresh topic's offsets count from 0 up to)."""
    done = await conn.fetchval(
        "SELECT coalesce(sum(last_offset + 1), 0) FROM consumer_positions"
        " WHERE consumer_group = $1",
        group,
    )
    return int(done)


async def events_stored(conn: Queryable) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM events"))


async def events_stored_of(conn: Queryable, event_ids: Sequence[str]) -> int:
    """How many of these events are stored."""
    stored = await conn.fetchval(
        "SELECT count(*) FROM events WHERE event_id = ANY($1::uuid[])", event_ids
    )
    return int(stored)


async def events_stored_before(conn: Queryable, epoch_s: float) -> int:
    """Events stored before `epoch_s` (seconds since the epoch)."""
    before = await conn.fetchval(
        "SELECT count(*) FROM events WHERE stored_at < to_timestamp($1)", epoch_s
    )
    return int(before)


async def first_stored_epoch(conn: Queryable) -> float:
    """When the first event was stored, in seconds since the epoch (fails without one)."""
    return float(await conn.fetchval("SELECT extract(epoch FROM min(stored_at)) FROM events"))


async def dead_letters(conn: Queryable) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM dead_letters"))


async def dead_letters_keyed(conn: Queryable, message_key: bytes) -> int:
    """Dead letters of messages with this Kafka key."""
    dead = await conn.fetchval(
        "SELECT count(*) FROM dead_letters WHERE message_key = $1", message_key
    )
    return int(dead)
