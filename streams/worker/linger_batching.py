"""Faust's `noack_take` with a linger: a batch's window starts with its first event.

Why (issue 15, freshness ≤ 100 ms at 2 000 events/s): Faust 0.15.3's take
holds new events back while the caller processes a batch, and starts the
next window (`within`, `BATCH_WITHIN_MS`) only when that batch is done. An
event that arrived just after a batch was taken waited for that batch's
transaction, then for a whole window, then for its own transaction:
`T + within + T`. The rule here is Kafka's producer `linger.ms`: a batch
goes when it holds `max_` events, or `within` after its first event came
in. Events keep coming into the next batch while the caller processes one,
so that wait is at most `max(within, T) + T`, and a worker that is behind
finds a full batch waiting when it is done instead of filling it then
(decoding overlaps the other batch's database round trips).

One addition to the linger: a batch whose linger is over still takes in
the events already fetched and waiting in the stream's channel queue
(`batch_due`). A linger alone cut a behind worker's batches to what came in
during the previous one (a short linger then cost 10-30 % more CPU per
event, and 0.74x on the Redis Cluster); with it, batches of a backlog fill
to `max_` whatever `BATCH_WITHIN_MS` is, so the linger can be short.
Events that a rebalance skips never reach the take's processor: the take
looks again at the queue at least once a linger, so a batch cannot wait
for them.

What stays Faust's (its source is pinned by sha256 in
`tests/unit/test_linger_batching.py`): events are taken by a processor on
the stream, which is drained passively; a batch never holds more than
`max_` events (the processor waits for room, as Faust's waits for the
buffer to be consumed); acks are the caller's (the "noack" of the name,
`agents.consume` acks after its batch went through); the stream's acks are
restored and the processor removed when the take ends.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, cast

import faust
from faust.types import ChannelT
from mode import Seconds, want_seconds
from mode.utils.aiter import aiter


def linger_left(first_at: float | None, now: float, within: float | None) -> float | None:
    """Seconds the pending batch may still wait for company (0.0: its linger is over).

    `first_at` is when its first event came in (None: no batch pending, wait
    for one), `now` the same clock (seconds), `within` the linger (None: no
    limit, the batch goes when full, as Faust's take without `within`).
    """
    if first_at is None or within is None:
        return None
    return max(0.0, first_at + within - now)


def batch_due(buffered: int, max_events: int, lingered: bool, waiting: int | None) -> bool:
    """Whether the pending batch of `buffered` events goes now.

    It goes when it holds `max_events`, or when its linger is over (`lingered`)
    and no more events were fetched for it to take in: `waiting` is how many
    delivered events wait in the stream's channel queue (None: a stream with no
    such queue, over an iterable). A worker that is behind always finds events
    waiting, so its batches still fill to `max_events` however short the linger.
    """
    if buffered >= max_events:
        return True
    return lingered and not waiting


def fetched_events_waiting(stream: Any) -> int | None:
    """How many delivered events wait in `stream`'s channel queue, not yet taken by
    the stream; None when the stream does not read a Faust channel (a stream over
    an iterable), which has no such queue."""
    queue = getattr(stream.channel, "queue", None)
    return None if queue is None else cast(int, queue.qsize())


class _Pending:
    """The batch being gathered: its events, when its first came in, and the
    signals between the stream's processor (`add`) and the take (`take`)."""

    def __init__(
        self,
        max_events: int,
        linger: float | None,
        clock: Callable[[], float],
        waiting: Callable[[], int | None],
    ) -> None:
        self.max_events = max_events
        self.linger = linger
        self.clock = clock
        self.waiting = waiting
        self.events: list[Any] = []
        self.first_at: float | None = None
        self.started = asyncio.Event()  # the batch has its first event
        self.ready = asyncio.Event()  # the batch is due (`batch_due`)
        self.room = asyncio.Event()  # a full batch was taken

    def is_full(self) -> bool:
        return len(self.events) >= self.max_events

    def linger_left(self) -> float | None:
        return linger_left(self.first_at, self.clock(), self.linger)

    def is_due(self) -> bool:
        return batch_due(
            len(self.events), self.max_events, self.linger_left() == 0.0, self.waiting()
        )

    def add(self, event: Any) -> None:
        if not self.events:
            self.first_at = self.clock()
            self.started.set()
        self.events.append(event)
        if self.is_due():
            self.ready.set()

    def take(self) -> list[Any]:
        batch = self.events
        self.events = []
        self.first_at = None
        self.started.clear()
        self.ready.clear()
        self.room.set()
        return batch


class LingerStream(faust.Stream[Any]):
    """Faust's stream whose `noack_take` lingers per batch (module docstring).
    Installed with the `Stream` setting (`streams.worker.faust_options`)."""

    async def noack_take(self, max_: int, within: Seconds) -> AsyncGenerator[Sequence[Any], None]:
        """Batches of 1 to `max_` events, in the stream's order, each yielded when
        full, or once `within` (seconds) has passed since its first event came in
        and no more fetched events wait to join it; acks are left to the caller
        (Faust's `noack_take`)."""
        linger = want_seconds(within) if within else None
        pending = _Pending(
            max_, linger, asyncio.get_running_loop().time, lambda: fetched_events_waiting(self)
        )
        stream_enable_acks: bool = self.enable_acks

        async def add_to_pending(value: Any) -> Any:
            try:
                event = self.current_event
                if event is None:
                    raise RuntimeError("Take buffer found current_event is None")
                while pending.is_full() and not self.should_stop:
                    # Faust's strict stop: never more than max_ in a batch.
                    pending.room.clear()
                    await self.wait(pending.room)  # type: ignore[arg-type]
                pending.add(event)
            except CancelledError:  # pragma: no cover
                raise
            except Exception as exc:
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)
            return value

        self.enable_acks = False
        self.add_processor(add_to_pending)
        self._enable_passive(cast(ChannelT[Any], aiter(self.channel)))
        try:
            while not self.should_stop:
                if not pending.events:
                    await self.wait_for_stopped(pending.started)  # type: ignore[arg-type]
                elif pending.ready.is_set() or pending.is_due():
                    yield pending.take()
                else:
                    # Until its linger is over; then, while fetched events still
                    # come in, until the processor finds it due, or a linger later
                    # (events a rebalance skips never reach the processor).
                    left = pending.linger_left()
                    timeout = linger if left == 0.0 else left
                    # mode types `timeout` as Seconds without None, its own default.
                    await self.wait_for_stopped(pending.ready, timeout=timeout)  # type: ignore[arg-type]
        finally:
            self.enable_acks = stream_enable_acks
            self._processors.remove(add_to_pending)
