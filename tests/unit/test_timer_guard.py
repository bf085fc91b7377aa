"""A periodic job that raises must not crash the worker (`timers.guarded`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import ResponseError

from streams.worker.timers import TIMERS, guarded


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        KafkaConnectionError("broker away"),
        OSError("connection refused"),
        RuntimeError("anything else"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_an_exception_of_a_timer_is_logged_and_goes_no_further(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    async def sweep_idle_sessions(app: Any) -> None:
        raise error

    with caplog.at_level(logging.ERROR):
        await guarded(sweep_idle_sessions)(object())
    assert "timer sweep_idle_sessions failed" in caplog.text
    assert caplog.records[-1].exc_info is not None and caplog.records[-1].exc_info[1] is error


async def test_cancellation_still_goes_through() -> None:
    async def timer(app: Any) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await guarded(timer)(object())


async def test_a_guarded_timer_keeps_its_name_and_its_one_argument() -> None:
    """Faust passes the app to a timer that takes one argument (inspect.signature)."""
    import inspect

    for timer in TIMERS:
        wrapped = guarded(timer.run)
        assert wrapped.__name__ == timer.run.__name__
        assert list(inspect.signature(wrapped).parameters) == ["app"]
