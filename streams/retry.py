"""Retry policy for the agents: back off on transient failures, forever.

Faust acknowledges a message whose handler raised, so a handler must not
raise because Redis or PostgreSQL is briefly away: it waits here instead,
with exponential backoff and jitter (tenacity), and the Kafka offset stays
uncommitted until the batch has landed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_never,
    wait_exponential_jitter,
)

from streams.errors import classify, is_transient

T = TypeVar("T")
log = logging.getLogger(__name__)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "transient failure in %s (attempt %d), waiting: %s; %s: %s",
        getattr(state.fn, "__qualname__", state.fn),
        state.attempt_number,
        classify(exc).why if exc is not None else "?",
        type(exc).__name__,
        str(exc)[:300],
    )


async def until_done(
    step: Callable[[], Awaitable[T]],
    *,
    max_backoff_s: float,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run `step` until it succeeds; transient errors back off, others raise."""

    def before_sleep(state: RetryCallState) -> None:
        _log_retry(state)
        if on_retry is not None:
            on_retry()

    retrying = AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(initial=0.05, max=max_backoff_s),
        stop=stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:  # tenacity awaits only real coroutine functions
        return await step()

    return await retrying(attempt)
