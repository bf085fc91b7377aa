"""The write path of one batch: decode, persist, project, then let Kafka commit.

`BatchPipeline.process` runs the steps in this order, and the order is the
exactly-once argument:

1. Decode every message; bad ones become dead-letter rows.
2. One unit of work of the store (`streams.store.base.Store`: one PostgreSQL
   transaction; the unit tests use the in-memory store): dead letters, events
   (`ON CONFLICT DO NOTHING`, so a redelivered event is not new), state
   changes of the new events, counters, and the consumed positions. All or
   nothing.
3. Redis: absolute values computed from the committed state, one pipeline.
   A crash between 2 and 3 is repaired by the redelivery, which re-projects
   every entity of the batch even though none of its events is new.
4. Publish the batch's dead letters from the PostgreSQL outbox.
5. Return; only then does the agent acknowledge the messages, and Faust
   commits the Kafka offsets after that.

Failures that wait (streams/errors.py: a server unreachable, read-only, out
of memory, …) are retried with backoff in the step that met them; the batch
never moves on without them. A batch that fails for any other reason is
split, and an event that still fails on its own is dead-lettered as
`processing_error`. `process` itself never raises: whatever escapes that,
the same batch runs again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg

from schemas.events import Rejection, RejectReason, decode_event
from streams.errors import is_transient
from streams.health import ConnectionHealth
from streams.model import BatchOutcome
from streams.projections import RedisOp
from streams.redis_targets import RedisTargets
from streams.retry import until_done
from streams.sinks import redis as redis_sink
from streams.store.base import DeadLetterRow, Store, StoredEvent, Tx, payload_sha
from streams.store.postgres_store import PostgresStore
from streams.write import deadletters
from streams.write.handlers.base import Handler

log = logging.getLogger(__name__)

SINGLE_EVENT_RETRY_PAUSES_S = (0.5, 2.0)
"""Before an event is dead-lettered as processing_error, it is tried again after these."""

MISROUTED_LOG_EVERY_S = 60.0
"""At most one warning a minute per pipeline for events keyed other than by user_id."""


def misrouted(stored: Sequence[StoredEvent]) -> list[StoredEvent]:
    """The valid events whose Kafka key is not their user_id as UTF-8 (no key included).

    SPEC §2 keys every event topic by user_id: that is what keeps one user's
    events in one partition, in order. An event keyed otherwise is still a valid
    event and is accepted (PostgreSQL's truth does not depend on the key), but
    its order against the user's other events is no longer Kafka's to keep: a
    session.activity may then be taken before its session.started
    (unknown_session). So it is counted and logged, never silently taken.
    """
    return [s for s in stored if s.key != s.event.user_id.encode()]


RedisWriter = Callable[[Sequence[RedisOp]], Awaitable[None]]
"""Writes a batch's Redis operations (by default `streams.sinks.redis.write_by_target`)."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A Kafka message as the agents hand it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class _Persisted:
    redis_ops: list[RedisOp]
    dead_letters: list[DeadLetterRow]
    new: int
    duplicates: int
    new_occurred_at: list[datetime] = field(default_factory=list)


class BatchPipeline:
    """Runs batches of one source topic through the steps above.

    State goes to `store` (default: the PostgreSQL store on `pool`), Redis
    operations to `write_redis` (default: the sink on the `redis` targets).
    """

    def __init__(
        self,
        *,
        handler: Handler,
        topic_prefix: str,
        consumer_group: str,
        pool: asyncpg.Pool | None = None,
        redis: RedisTargets | None = None,
        publish: deadletters.Publish,
        dead_letter_topic: str,
        max_event_bytes: int,
        max_audio_bytes: int,
        max_backoff_s: float,
        max_clock_skew_s: float = 300.0,
        health: ConnectionHealth | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        store: Store | None = None,
        write_redis: RedisWriter | None = None,
    ) -> None:
        if store is None:
            if pool is None:
                raise TypeError("BatchPipeline needs a store, or a pool for the PostgreSQL one")
            store = PostgresStore(pool)
        if write_redis is None:
            if redis is None:
                raise TypeError("BatchPipeline needs write_redis, or the Redis targets")
            write_redis = partial(redis_sink.write_by_target, redis)
        self.handler = handler
        self.topic_prefix = topic_prefix
        self.group = consumer_group
        self.store = store
        self.redis = redis
        """Every key family's Redis target (SPEC §8): each op goes to its family's."""
        self.write_redis = write_redis
        self.publish = publish
        self.dead_letter_topic = dead_letter_topic
        self.max_event_bytes = max_event_bytes
        self.max_audio_bytes = max_audio_bytes
        self.max_backoff_s = max_backoff_s
        self.max_clock_skew = timedelta(seconds=max_clock_skew_s)
        """How far past now an occurred_at may lie (producers' clock skew)."""
        self.health = health or ConnectionHealth()
        self.retrying = False
        """True while a batch waits for Redis or PostgreSQL to come back."""
        self._misrouted_logged_at = -MISROUTED_LOG_EVERY_S
        self.on_batch = on_batch
        self.clock = clock

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        """Run one batch through every step; return only once it is done.

        Never raises (but for cancellation): Faust acks a message whose handler
        raised, and its supervisor restarts a crashed agent *after* the batch
        it never acked, which would leave those events unprocessed until the
        process restarts. A failure that escapes the steps' own handling (the
        dead letter of a failed event cannot be stored either) is logged and
        the same batch runs again after a backoff, for as long as it takes.
        """
        if not messages:
            return BatchOutcome()
        started = time.monotonic()
        outcome = await self._process_until_done(messages)
        outcome.topic = self.handler.topic_suffix
        outcome.seconds = time.monotonic() - started
        self.retrying = False
        if self.on_batch is not None:
            self.on_batch(outcome)
        return outcome

    async def _process_until_done(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        pause = 0.5
        while True:
            try:
                return await self._process(messages)
            except Exception:
                self.retrying = True
                first = messages[0]
                log.exception(
                    "batch of %d from %s[%d]@%d failed beyond its own handling; running it"
                    " again in %.1f s (its offsets are not acknowledged, nothing is skipped)",
                    len(messages),
                    first.topic,
                    first.partition,
                    first.offset,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.max_backoff_s)

    async def _process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        """`process` without the callback: a split batch reports once, as a whole."""
        outcome = BatchOutcome(messages=len(messages))
        try:
            await self._run(messages, outcome)
        except Exception as exc:
            if len(messages) == 1:
                await self._alone(messages[0], exc, outcome)
            else:
                log.exception("batch of %d failed; retrying event by event", len(messages))
                outcome.split = True
                outcome.accepted = 0  # the failed run's count: the events are counted below
                for message in messages:
                    sub = await self._process([message])
                    outcome.accepted += sub.accepted
                    outcome.new += sub.new
                    outcome.duplicates += sub.duplicates
                    outcome.dead_letters += sub.dead_letters
                    outcome.misrouted += sub.misrouted
                    outcome.redis_ops += sub.redis_ops
                    outcome.retries += sub.retries
                    outcome.freshness_s += sub.freshness_s
                    outcome.reasons += sub.reasons
        return outcome

    async def _run(self, messages: Sequence[RawMessage], outcome: BatchOutcome) -> None:
        # 1. decode
        stored, rejected = self._decode(messages)
        outcome.accepted = len(stored)
        if wrong := misrouted(stored):
            outcome.misrouted = len(wrong)
            self._warn_misrouted(wrong)

        def count_retry() -> None:
            outcome.retries += 1
            self.retrying = True

        # 2. persist (one unit of work: one transaction)
        persisted = await until_done(
            lambda: self.health.track(
                "postgres", lambda: self._persist(messages, stored, rejected)
            ),
            max_backoff_s=self.max_backoff_s,
            on_retry=count_retry,
        )
        outcome.new, outcome.duplicates = persisted.new, persisted.duplicates
        outcome.dead_letters = len(persisted.dead_letters)
        outcome.reasons = [d.reason for d in persisted.dead_letters]
        # 3. project
        outcome.redis_ops = len(persisted.redis_ops)
        await self._project(persisted.redis_ops, count_retry)
        projected_at = self.clock()
        outcome.freshness_s = [
            max(0.0, (projected_at - at).total_seconds()) for at in persisted.new_occurred_at
        ]
        # 4. publish dead letters
        if persisted.dead_letters:
            await self._publish_dead_letters(count_retry)
        # 5. the caller acknowledges; Faust commits the offsets afterwards

    def _warn_misrouted(self, wrong: list[StoredEvent]) -> None:
        """One warning per MISROUTED_LOG_EVERY_S at most (a producer that keys nothing
        would otherwise log on every batch); the metric counts them all."""
        now = time.monotonic()
        if now - self._misrouted_logged_at < MISROUTED_LOG_EVERY_S:
            return
        self._misrouted_logged_at = now
        first = wrong[0]
        log.warning(
            "%d event(s) of this batch keyed other than by their user_id, e.g. %s[%d]@%d"
            " keyed %r for user %r: accepted, but Kafka keeps one user's events in order"
            " only when they are keyed by user_id (SPEC §2); counted in"
            " rpcache_events_misrouted_total, this warning at most once a minute",
            len(wrong),
            first.topic,
            first.partition,
            first.offset,
            None if first.key is None else first.key[:64],
            first.event.user_id,
        )

    def _decode(
        self, messages: Sequence[RawMessage]
    ) -> tuple[list[StoredEvent], list[DeadLetterRow]]:
        stored: list[StoredEvent] = []
        rejected: list[DeadLetterRow] = []
        not_after = self.clock() + self.max_clock_skew
        for m in messages:
            suffix = m.topic.removeprefix(self.topic_prefix)
            result = decode_event(
                m.value,
                topic=suffix,
                max_bytes=self.max_event_bytes,
                max_audio_bytes=self.max_audio_bytes,
                not_after=not_after,
            )
            if isinstance(result, Rejection):
                rejected.append(self._row(m, result))
            else:
                stored.append(
                    StoredEvent(
                        result, m.topic, m.partition, m.offset, result.stored_json(), m.key, m.value
                    )
                )
        return stored, rejected

    async def _persist(
        self,
        messages: Sequence[RawMessage],
        stored: list[StoredEvent],
        rejected: list[DeadLetterRow],
    ) -> _Persisted:
        now = self.clock()
        async with self.store.transaction() as tx:
            first, repeats = _first_of_each(stored)
            new_ids = await tx.insert_events(first)
            new = [s for s in first if s.event.event_id in new_ids]
            dead = list(rejected)
            seen = [s for s in first if s.event.event_id not in new_ids]
            dead += await self._conflicts(tx, seen + repeats)
            result = await self.handler.apply(tx, new, stored, now)
            dead += [self._row_for(s, r) for s, r in result.rejections]
            await tx.insert_dead_letters(dead)
            await tx.record_positions(self.group, _positions(messages))
        return _Persisted(
            result.redis_ops,
            dead,
            len(new),
            len(stored) - len(new),
            [s.event.occurred_at for s in new],
        )

    async def _conflicts(self, tx: Tx, seen: list[StoredEvent]) -> list[DeadLetterRow]:
        """A known event_id with different content: the first one wins."""
        if not seen:
            return []
        shas = await tx.stored_payload_shas({s.event.event_id for s in seen})
        differ = [
            s
            for s in seen
            if shas.get(s.event.event_id, payload_sha(s.payload)) != payload_sha(s.payload)
        ]
        if differ:  # other bytes may still be the same JSON (nested key order, 1 vs 1.0)
            same = await tx.same_stored_payloads([(s.event.event_id, s.payload) for s in differ])
            differ = [s for n, s in enumerate(differ) if n not in same]
        return [
            self._row_for(
                s,
                Rejection(
                    RejectReason.DUPLICATE_EVENT_CONFLICT,
                    "event_id already stored with different content; the first one stands",
                    s.event.event_id,
                ),
            )
            for s in differ
        ]

    async def _project(self, ops: list[RedisOp], count_retry: Callable[[], None]) -> None:
        try:
            await until_done(
                lambda: self.health.track("redis", lambda: self.write_redis(ops)),
                max_backoff_s=self.max_backoff_s,
                on_retry=count_retry,
            )
        except Exception:
            # An answer waiting cannot fix (WRONGTYPE: a key of ours rewritten by
            # someone else with another type; streams/errors.py). PostgreSQL holds
            # the events; `rpcache replay` rewrites the keys once fixed.
            log.exception(
                "Redis refused a projection (waiting cannot fix it); PostgreSQL is intact"
            )

    async def _publish_dead_letters(self, count_retry: Callable[[], None] | None = None) -> None:
        """Publish the outbox; wait while Kafka is away, never fail the batch.

        The rows are committed already (the outbox), so a failure retrying
        cannot fix (an authorisation error, a message the broker refuses) must
        not send a stored batch through the split path: it is logged, the rows
        stay unpublished, and the 30 s outbox timer tries them again.
        """
        try:
            await until_done(
                self.flush_dead_letters, max_backoff_s=self.max_backoff_s, on_retry=count_retry
            )
        except Exception:
            log.exception("dead letters not published (kept in the outbox; retried every 30 s)")

    async def flush_dead_letters(self) -> int:
        return await deadletters.flush(self.store, self.publish, self.dead_letter_topic)

    async def _alone(self, message: RawMessage, exc: Exception, outcome: BatchOutcome) -> None:
        """One event failed for a reason not known to be transient: try it twice more
        (on fresh connections, after a pause) before calling it a bad event."""
        for pause in SINGLE_EVENT_RETRY_PAUSES_S:
            log.warning(
                "event at %s[%d]@%d failed (%r); trying again in %.1f s",
                message.topic,
                message.partition,
                message.offset,
                exc,
                pause,
            )
            await asyncio.sleep(pause)
            try:
                await self._run([message], outcome)
                return
            except Exception as again:
                exc = again
        await self._dead_letter_failure(message, exc, outcome)

    async def _dead_letter_failure(
        self, message: RawMessage, exc: Exception, outcome: BatchOutcome
    ) -> None:
        """The event fails on its own for a reason retrying cannot fix."""
        if is_transient(exc):  # pragma: no cover - until_done never gives up on these
            raise exc
        log.error(
            "event at %s[%d]@%d cannot be processed: %r",
            message.topic,
            message.partition,
            message.offset,
            exc,
        )
        row = self._row(message, Rejection(RejectReason.PROCESSING_ERROR, repr(exc)[:1000]))

        async def persist() -> None:
            async with self.store.transaction() as tx:
                await tx.insert_dead_letters([row])
                await tx.record_positions(self.group, _positions([message]))

        await until_done(persist, max_backoff_s=self.max_backoff_s)
        await self._publish_dead_letters()
        outcome.dead_letters += 1
        outcome.reasons.append(row.reason)

    def _row(self, m: RawMessage, rejection: Rejection) -> DeadLetterRow:
        return deadletters.dead_letter_row(
            rejection,
            topic=m.topic,
            partition=m.partition,
            offset=m.offset,
            key=m.key,
            original=m.value,
        )

    def _row_for(self, s: StoredEvent, rejection: Rejection) -> DeadLetterRow:
        return deadletters.dead_letter_row(
            rejection,
            topic=s.topic,
            partition=s.partition,
            offset=s.offset,
            key=s.key,
            original=s.raw,
        )


def _first_of_each(stored: list[StoredEvent]) -> tuple[list[StoredEvent], list[StoredEvent]]:
    """Split a batch into first occurrences and in-batch repeats of an event_id."""
    seen: set[str] = set()
    first: list[StoredEvent] = []
    repeats: list[StoredEvent] = []
    for s in stored:
        (repeats if s.event.event_id in seen else first).append(s)
        seen.add(s.event.event_id)
    return first, repeats


def _positions(messages: Sequence[RawMessage]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic, m.partition)
        out[key] = max(out.get(key, -1), m.offset)
    return out
