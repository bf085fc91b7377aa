"""The budget of one Redis round trip, this process's own lateness not counted.

A round trip gets READ_TIMEOUT_MS, measured on the event loop's clock. When
the budget's timer fires late, the loop was too busy to read an answer that
may be waiting in the socket, so the round trip gets more time instead of
being blamed on Redis; why, and what was measured, is "What is Redis's fault"
in `streams.read.reader`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from streams.read.stats import Counters

T = TypeVar("T")

OVERLOAD_GRACE_S: Final = 1.0
"""How much longer than the budget a round trip may take while this process's event
loop is late, before PostgreSQL answers instead (without charging the breaker)."""


def loop_tolerance_s(budget_s: float) -> float:
    """How late the budget's timer may fire and still count as the loop being on time."""
    return max(0.002, budget_s / 10)


class ProcessLateError(Exception):
    """A round trip expired while this process's event loop was late (not Redis's fault)."""


async def within_budget(call: Callable[[], Awaitable[T]], budget_s: float, counts: Counters) -> T:
    """`call()` within `budget_s`, the loop's own lateness not counted (`_Deadline`).

    Raises `TimeoutError` when the budget ran out while the loop was on time
    (Redis's fault) and `ProcessLateError` when it ran out while the loop was
    still late OVERLOAD_GRACE_S past it (this process's). A round trip given
    more time because the loop was late counts in `counts.loop_late`.
    """
    loop = asyncio.get_running_loop()
    deadline: _Deadline | None = None
    try:
        async with asyncio.timeout(None) as timeout:
            deadline = _Deadline(loop, timeout, budget_s, OVERLOAD_GRACE_S)
            try:
                return await call()
            finally:
                deadline.cancel()
    except TimeoutError:
        if deadline is not None and deadline.overloaded:
            raise ProcessLateError from None
        raise
    finally:
        if deadline is not None and deadline.late:
            counts.loop_late += 1


class _Deadline:
    """The budget of one Redis round trip on the loop's clock, not counting the
    loop's own lateness.

    Drives an `asyncio.Timeout` entered without a deadline: at the budget's end
    it expires it, unless its own timer fired late, in which case it looks again
    after as much time again as the loop was late, up to `grace_s` past the
    budget; expiring past that sets `overloaded`.
    """

    __slots__ = (
        "_due",
        "_handle",
        "_limit",
        "_loop",
        "_timeout",
        "_tolerance",
        "late",
        "overloaded",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: asyncio.Timeout,
        budget_s: float,
        grace_s: float,
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._due = loop.time() + budget_s
        self._limit = self._due + grace_s
        self._tolerance = loop_tolerance_s(budget_s)
        self.late = False
        """The loop was found late at least once: the round trip was given more time."""
        self.overloaded = False
        """Expired while the loop was still late: the process's fault, not Redis's."""
        self._handle = loop.call_at(self._due, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        lateness = now - self._due
        if lateness > self._tolerance:
            self.late = True
            if now < self._limit:
                self._due = min(now + lateness, self._limit)
                self._handle = self._loop.call_at(self._due, self._check)
                return
            self.overloaded = True
        # Expire at the next turn of the loop: a task already woken by its answer runs first.
        self._timeout.reschedule(now)

    def cancel(self) -> None:
        self._handle.cancel()
