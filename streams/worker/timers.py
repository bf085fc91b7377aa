"""The worker's periodic work, registered by `streams/app.py` from `TIMERS`.

Each timer is a plain coroutine function of the app that runs it (Faust
passes the app to a timer that takes one argument), so this module imports
nothing of `streams.app`. Every timer survives an unreachable server: it
logs and the next tick tries again; none ever raises into Faust.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from schemas.keys import AGENT_TOPICS, topic_name
from streams.observe import heartbeat
from streams.settings import Settings
from streams.store import postgres as pg
from streams.worker.runtime import Runtime
from streams.worker.watchdog import EXIT_STALLED

log = logging.getLogger(__name__)

App = Any
"""The running `streams.app.RpcacheApp` (typed loosely: the app module imports this one)."""


async def sweep_idle_sessions(app: App) -> None:
    """Expire sessions idle for 30 minutes: active_sessions falls, PostgreSQL records it."""
    ops = await app.runtime.sweep_idle_sessions()
    if ops:
        log.info("idle sweep wrote %d Redis operations", ops)


async def project_stats(app: App) -> None:
    """The one writer of stats:realtime:{day} (streams/write/handlers/stats.py)."""
    runtime: Runtime = app.runtime
    try:
        await runtime.project_stats()
    except Exception as exc:  # unreachable now; the next tick tries again
        if not runtime.stats_failing:  # an outage is logged once, not twice a second
            log.warning("stats projection failed, retrying every tick: %r", exc)
        runtime.stats_failing = True
        return
    if runtime.stats_failing:
        log.info("stats projection works again")
    runtime.stats_failing = False


async def evaluate_alerts(app: App) -> None:
    """Alert thresholds: on every change (debounced to 1 s) and every ALERT_INTERVAL_S."""
    engine = app.runtime.alerts
    if not engine.due(time.monotonic()):
        return
    try:
        await engine.evaluate(datetime.now(UTC), time.monotonic())
    except Exception:  # the figures are unreachable now; the next tick tries again
        log.exception("alert evaluation failed")


async def watch_redis(app: App) -> None:
    """Rebuild Redis from PostgreSQL by itself after it lost its data."""
    runtime: Runtime = app.runtime
    if not runtime.settings.auto_rebuild:
        return
    try:
        await runtime.watch.check()
    except Exception as exc:  # Redis unreachable: the next tick looks again
        log.warning("Redis watch could not check the data-loss marker: %r", exc)


async def consumer_watchdog(app: App) -> None:
    """Exit for the supervisor when owned partitions stop moving while lag grows."""
    runtime: Runtime = app.runtime
    settings = runtime.settings
    if not settings.watchdog_stall_s:
        return
    sources = {topic_name(settings.topic_prefix, s) for s in AGENT_TOPICS.values()}
    assigned = [(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in sources]
    if not assigned:
        return
    try:
        ends = await runtime.end_offsets(assigned)
        positions = await pg.last_offsets(runtime.pool, settings.app_id)
    except Exception as exc:  # the broker or the database is away: not a stall of ours
        log.info("watchdog: cannot read offsets now: %r", exc)
        return
    stalls = runtime.watchdog.observe(assigned, ends, positions, runtime.retrying)
    real = []
    for stall in stalls:  # transaction markers and aborted records are not a stall
        tp = (stall.topic, stall.partition)
        try:
            remaining = await runtime.has_records_after(*tp, positions.get(tp, -1) + 1)
        except Exception as exc:  # the broker is away: not a stall of ours
            log.info("watchdog: cannot read %s[%d] now: %r", *tp, exc)
            continue
        if remaining:
            real.append(stall)
        else:
            runtime.watchdog.settled(tp, ends[tp])
    stalls = real
    if stalls:
        log.error(
            "watchdog: consumer stalled (%s); exiting with status %d so the supervisor"
            " restarts the worker from the committed offsets",
            "; ".join(s.describe() for s in stalls),
            EXIT_STALLED,
        )
        logging.shutdown()
        os._exit(EXIT_STALLED)


async def write_heartbeat(app: App) -> None:
    """Tell `rpcache check` this worker's loop runs and reaches PostgreSQL."""
    await write_beat(app.runtime, starting=not app.consuming)


async def flush_dead_letters(app: App) -> None:
    """Publish dead letters a crash left in the PostgreSQL outbox."""
    await app.runtime.flush_dead_letters()


async def write_beat(runtime: Runtime, *, starting: bool) -> None:
    """One heartbeat row write; PostgreSQL away means a stale beat, which check reports."""
    settings = runtime.settings
    try:
        async with (
            asyncio.timeout(settings.heartbeat_interval_s),
            runtime.pool.acquire() as conn,
        ):
            await heartbeat.beat(conn, settings, starting=starting)
    except Exception as exc:
        log.warning("heartbeat not written: %r", exc)


async def heartbeat_stopped(runtime: Runtime) -> None:
    """Record a clean stop (best effort: a stale beat says the same, later)."""
    try:
        async with asyncio.timeout(2.0), runtime.pool.acquire() as conn:
            await heartbeat.stopped(conn, runtime.settings)
    except Exception as exc:
        log.warning("heartbeat: could not record the stop: %r", exc)


def guarded(run: Callable[[App], Awaitable[None]]) -> Callable[[App], Awaitable[None]]:
    """`run`, but an exception it raises is logged and goes no further.

    Faust crashes the whole worker when a timer raises (mode's Service treats
    it as a crashed task), so one refused write in a periodic job (a WRONGTYPE
    answer to the idle sweep: a key of ours that someone else rewrote with
    another type) would stop every agent. Each timer already waits out or
    logs what it expects; this is the last line for what it does not: the
    next tick runs it again. Cancellation (BaseException) still goes through.
    """

    @functools.wraps(run)
    async def timer(app: App) -> None:
        try:
            await run(app)
        except Exception:
            log.exception("timer %s failed; it runs again at its next tick", run.__name__)

    return timer


@dataclass(frozen=True, slots=True)
class Timer:
    run: Callable[[App], Awaitable[None]]
    interval_s: Callable[[Settings], float]
    on_leader: bool = False
    """Only the consumer group's leader runs it (one writer for the whole group)."""


TIMERS: Final[tuple[Timer, ...]] = (
    Timer(sweep_idle_sessions, lambda s: s.session_sweep_interval_s),
    Timer(project_stats, lambda s: s.stats_interval_s, on_leader=True),
    Timer(evaluate_alerts, lambda s: 1.0, on_leader=True),
    Timer(watch_redis, lambda s: s.redis_watch_interval_s, on_leader=True),
    Timer(consumer_watchdog, lambda s: s.watchdog_interval_s),
    Timer(write_heartbeat, lambda s: s.heartbeat_interval_s),
    Timer(flush_dead_letters, lambda s: 30.0),
)
