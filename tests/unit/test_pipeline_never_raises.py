"""`BatchPipeline.process` never raises: Faust would restart the agent past the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streams.projections import RedisOp
from streams.store.memory import MemoryStore
from streams.write.handlers.sessions import SessionHandler
from streams.write.pipeline import BatchOutcome, BatchPipeline, RawMessage

MESSAGES = [RawMessage("p.session-events", 0, 7, b"k", b"{}")]


def _pipeline() -> BatchPipeline:
    async def publish(topic: str, key: bytes | None, value: bytes) -> None:
        raise AssertionError("not reached")

    async def write_redis(ops: Sequence[RedisOp]) -> None:
        raise AssertionError("not reached")

    return BatchPipeline(
        handler=SessionHandler(tz=ZoneInfo("UTC"), quota=50),
        topic_prefix="p.",
        consumer_group="g",
        store=MemoryStore(),  # _process is replaced below
        write_redis=write_redis,
        publish=publish,
        dead_letter_topic="p.dead-letters",
        max_event_bytes=1024,
        max_audio_bytes=1024,
        max_backoff_s=0.01,
    )


async def test_a_failure_that_escapes_runs_the_same_batch_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = _pipeline()
    seen: list[Sequence[RawMessage]] = []
    failures = [RuntimeError("dead letter not storable"), KeyError("a bug"), None]

    async def flaky(messages: Sequence[RawMessage]) -> BatchOutcome:
        seen.append(messages)
        failure = failures.pop(0)
        if failure is not None:
            raise failure
        return BatchOutcome(messages=len(messages), accepted=1)

    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(pipeline, "_process", flaky)
    monkeypatch.setattr("streams.write.pipeline.asyncio.sleep", no_sleep)
    outcome = await pipeline.process(MESSAGES)
    assert outcome.accepted == 1
    assert [list(m) for m in seen] == [MESSAGES] * 3  # the same batch, never a later one
    assert pipeline.retrying is False  # reset once the batch is done


async def test_cancellation_still_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker shutdown cancels the agent: the batch is left unacked, not retried."""
    pipeline = _pipeline()

    async def cancelled(messages: Any) -> BatchOutcome:
        raise asyncio.CancelledError

    monkeypatch.setattr(pipeline, "_process", cancelled)
    with pytest.raises(asyncio.CancelledError):
        await pipeline.process(MESSAGES)
