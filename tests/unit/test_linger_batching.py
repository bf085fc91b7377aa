"""The lingering take (streams/worker/linger_batching.py): the rule by a table,
then the stream itself on a Faust in-memory channel (no server: a channel is a
queue in the process), and the pin of the Faust method it replaces.

The lingers here are long against the test's own steps (seconds against
milliseconds), so what a test shows is which window a batch waited for, not
how fast anything ran; `asyncio.timeout` only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import textwrap
from collections.abc import AsyncIterator

import faust
import pytest

from streams.worker.linger_batching import (
    LingerStream,
    batch_due,
    fetched_events_waiting,
    linger_left,
)

NOACK_TAKE_SHA256 = "ad0a704eef3c1f69289e123624851af2f58b4e353cd086901bb2cb16f01342dd"
"""sha256 of faust-streaming 0.15.3's `Stream.noack_take`, which the override replaces."""
GUARD_S = 20.0


def test_faust_noack_take_is_the_one_the_override_replaces() -> None:
    source = textwrap.dedent(inspect.getsource(faust.Stream.noack_take))
    assert hashlib.sha256(source.encode()).hexdigest() == NOACK_TAKE_SHA256, (
        "faust-streaming changed Stream.noack_take: re-read it against "
        "streams/worker/linger_batching.py, then update the digest"
    )


@pytest.mark.parametrize(
    ("first_at", "now", "within", "left"),
    [
        (None, 5.0, 0.05, None),  # nothing pending: wait for a first event
        (10.0, 10.0, 0.05, 0.05),  # the first event just came in
        (10.0, 10.02, 0.05, 0.03),
        (10.0, 10.05, 0.05, 0.0),  # its linger is over: it goes now
        (10.0, 10.30, 0.05, 0.0),  # it came in while a long batch was processed
        (10.0, 11.0, None, None),  # no linger: only a full batch goes
    ],
)
def test_linger_left(
    first_at: float | None, now: float, within: float | None, left: float | None
) -> None:
    got = linger_left(first_at, now, within)
    assert got == pytest.approx(left) if left is not None else got is None


@pytest.mark.parametrize(
    ("buffered", "max_events", "lingered", "waiting", "due"),
    [
        (1, 1000, False, 0, False),  # keeping up, linger not over: wait for company
        (1, 1000, True, 0, True),  # linger over, nothing more fetched: it goes
        (400, 1000, True, 0, True),
        (400, 1000, True, 3, False),  # more already fetched: let it join
        (400, 1000, True, 4096, False),  # behind: the queue is full, fill the batch
        (1000, 1000, False, 4096, True),  # full
        (1000, 1000, True, 0, True),
        (5, 1000, True, None, True),  # no channel queue: the linger decides
        (5, 1000, False, None, False),
    ],
)
def test_batch_due(
    buffered: int, max_events: int, lingered: bool, waiting: int | None, due: bool
) -> None:
    assert batch_due(buffered, max_events, lingered, waiting) is due


def _app() -> faust.App:
    app = faust.App(
        "linger-batching-test",
        broker="kafka://127.0.0.1:1",  # never contacted: the stream reads a channel
        store="memory://",
        Stream=LingerStream,
    )
    app.flow_control.resume()
    return app


async def _take(stream: LingerStream, max_events: int, within: float) -> AsyncIterator[list[int]]:
    async for batch in stream.noack_take(max_events, within=within):
        for event in batch:
            await stream.ack(event)
        yield [event.value for event in batch]


async def test_a_backlog_goes_in_full_batches_in_order_and_the_rest_after_its_linger() -> None:
    app = _app()
    channel = app.channel()
    stream = app.stream(channel)
    assert isinstance(stream, LingerStream)
    for n in range(250):
        await channel.send(value=n)
    got: list[list[int]] = []
    async with asyncio.timeout(GUARD_S), stream:
        async for batch in _take(stream, 100, 0.2):
            got.append(batch)
            if sum(map(len, got)) == 250:
                break
    assert [len(b) for b in got] == [100, 100, 50]
    assert [n for batch in got for n in batch] == list(range(250))


async def test_events_that_come_in_while_a_batch_is_processed_wait_one_linger_from_their_first() -> (
    None
):
    """Faust's take would start the second batch's window only after the first
    batch was processed (3 s), so the second batch would come 2 s after that."""
    app = _app()
    channel = app.channel()
    stream = app.stream(channel)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(GUARD_S), stream:
        await channel.send(value=0)
        batches = _take(stream, 100, within=2.0)
        assert await anext(batches) == [0]
        for n in (1, 2, 3):  # the caller is still "processing" batch [0]
            await channel.send(value=n)
        await asyncio.sleep(3.0)
        processed_at = loop.time()
        second = await anext(batches)
        waited = loop.time() - processed_at
        await batches.aclose()  # type: ignore[attr-defined]
    assert second == [1, 2, 3]
    assert waited < 1.0, f"the second batch lingered {waited:.2f} s after the first was done"


async def test_a_batch_that_is_not_full_waits_for_company_until_its_linger_ends() -> None:
    app = _app()
    channel = app.channel()
    stream = app.stream(channel)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(GUARD_S), stream:
        sent_at = loop.time()
        await channel.send(value=0)
        batches = _take(stream, 100, within=1.0)
        consumer = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.3)
        await channel.send(value=1)  # joins the batch: its linger is not over
        first = await consumer
        waited = loop.time() - sent_at
        await batches.aclose()  # type: ignore[attr-defined]
    assert first == [0, 1]
    assert waited >= 0.9, f"the batch went after {waited:.2f} s, before its linger of 1 s"


async def test_no_batch_holds_more_than_max_even_while_one_is_processed() -> None:
    app = _app()
    channel = app.channel()
    stream = app.stream(channel)
    got: list[list[int]] = []
    async with asyncio.timeout(GUARD_S), stream:
        await channel.send(value=0)
        batches = _take(stream, 10, within=0.1)
        got.append(await anext(batches))
        for n in range(1, 26):  # while [0] is processed: more than two batches' worth
            await channel.send(value=n)
        await asyncio.sleep(0.3)
        while sum(map(len, got)) < 26:
            got.append(await anext(batches))
        await batches.aclose()  # type: ignore[attr-defined]
    assert [len(b) for b in got] == [1, 10, 10, 5]
    assert [n for batch in got for n in batch] == list(range(26))


async def test_a_batch_past_its_linger_takes_in_the_events_already_fetched() -> None:
    """A slow step after the take's own (5 ms an event, so each event is in the
    batch before the stream sleeps) lets the linger (20 ms) run out while
    fetched events still wait: a linger alone would cut a batch of ~4."""
    app = _app()
    channel = app.channel()
    stream = app.stream(channel)

    async def slow(value: int) -> int:
        await asyncio.sleep(0.005)
        return value

    async with asyncio.timeout(GUARD_S), stream:
        batches = _take(stream, 1000, 0.02)
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.05)  # the take registers its step when it starts
        assert len(stream._processors) == 1
        stream.add_processor(slow)
        for n in range(60):
            await channel.send(value=n)
        got = [await first]
        while sum(map(len, got)) < 60:
            got.append(await anext(batches))
        await batches.aclose()  # type: ignore[attr-defined]
    assert got == [list(range(60))]


def test_a_stream_over_an_iterable_has_no_queue_to_look_at() -> None:
    stream = _app().stream([1, 2, 3])
    assert fetched_events_waiting(stream) is None
