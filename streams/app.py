"""The Faust app, its topics and its timers.

Run it with `rpcache worker` or `faust -A streams.app worker -l info`.
Values are consumed raw (bytes): decoding is ours, so that bad input becomes a
dead letter instead of a Faust deserialisation crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import faust

from schemas.keys import (
    DEAD_LETTER_TOPIC,
    INFERENCE_TOPIC,
    SESSION_TOPIC,
    SYNTHESIS_TOPIC,
    topic_name,
)
from streams.observe import heartbeat, web
from streams.observe.monitor import Monitor
from streams.read.warmup import warmup
from streams.security import faust_credentials
from streams.settings import get_settings
from streams.worker.kafka_transport import Transport as KafkaTransport
from streams.worker.preflight import EXIT_CONFIG, refusals
from streams.worker.runtime import Runtime, processed_positions
from streams.worker.watchdog import EXIT_STALLED

log = logging.getLogger(__name__)
settings = get_settings()

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Broker `message.max.bytes` of the stack and docker-compose."""


class RpcacheApp(faust.App):
    """Faust app that opens rpcache's connections before the agents start."""

    runtime: Runtime
    observer: Monitor
    consuming = False
    """Set once the first partition assignment is done: heartbeats stop saying "starting"."""

    async def on_first_start(self) -> None:
        """Runs before the web server, the consumer and the agents start (mode's Service)."""
        await super().on_first_start()
        await _refuse_to_start_without_access()
        self.runtime = await Runtime.start(settings, self._publish)
        # From now on `rpcache check` and /dashboard see this run, not the row
        # the previous one left ("stopped", its old pid).
        await _write_beat(self.runtime, starting=True)
        self.observer = Monitor(self.runtime)
        log.info("rpcache worker configured: %s", settings.redacted())
        if settings.warmup_on_start:
            try:
                await warmup(self.runtime.pool, self.runtime.redis, settings.warmup_top_n)
            except Exception:  # warm-up is an optimisation; the worker starts regardless
                log.exception("warm-up at start failed")

    def _create_directories(self) -> None:
        """Faust makes `datadir` without its parents; a fresh machine or an empty
        working directory has none (issue: `rpcache worker` outside the checkout)."""
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        super()._create_directories()

    async def on_started(self) -> None:
        """Faust returns from here once the first assignment is done and the timers run."""
        await super().on_started()
        if not self.should_stop:
            self.consuming = True
            await _write_beat(self.runtime, starting=False)

    def _new_transport(self) -> Any:
        """Faust's Kafka transport with our fetch wait (streams/worker/kafka_transport.py)."""
        return KafkaTransport(self.conf.broker_consumer, self)

    async def _publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self.producer.send_and_wait(
            topic, key, value, partition=None, timestamp=None, headers=None
        )

    async def on_stop(self) -> None:
        await super().on_stop()
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            await _heartbeat_stopped(runtime)
            await self.observer.close()
            await runtime.close()


app = RpcacheApp(
    settings.app_id,
    broker=[f"kafka://{server}" for server in settings.kafka_servers],
    store="memory://",
    datadir=settings.worker_data_dir,
    key_serializer="raw",
    value_serializer="raw",
    topic_partitions=settings.topic_partitions,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    producer_max_request_size=MAX_MESSAGE_BYTES,
    consumer_max_fetch_size=MAX_MESSAGE_BYTES,
    broker_commit_interval=1.0,
    broker_session_timeout=settings.kafka_session_timeout_s,
    broker_heartbeat_interval=settings.kafka_session_timeout_s / 5,
    broker_rebalance_timeout=settings.kafka_session_timeout_s * 2,
    web_enabled=settings.worker_web_enabled,
    web_port=settings.worker_web_port,
    web_bind=settings.worker_web_bind,
    web_in_thread=False,
    broker_credentials=faust_credentials(settings),
)


web.install(app)  # /metrics, /dashboard, /dashboard.json


def _raw_topic(suffix: str) -> Any:
    return app.topic(
        topic_name(settings.topic_prefix, suffix),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


session_topic = _raw_topic(SESSION_TOPIC)
inference_topic = _raw_topic(INFERENCE_TOPIC)
synthesis_topic = _raw_topic(SYNTHESIS_TOPIC)
dead_letter_topic = _raw_topic(DEAD_LETTER_TOPIC)


@app.timer(interval=settings.session_sweep_interval_s)
async def sweep_idle_sessions() -> None:
    """Expire sessions idle for 30 minutes: active_sessions falls, PostgreSQL records it."""
    ops = await app.runtime.sweep_idle_sessions()
    if ops:
        log.info("idle sweep wrote %d Redis operations", ops)


@app.timer(interval=settings.stats_interval_s, on_leader=True)
async def project_stats() -> None:
    """The one writer of stats:realtime:{day} (streams/write/families/stats.py)."""
    runtime = app.runtime
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


@app.timer(interval=1.0, on_leader=True)
async def evaluate_alerts() -> None:
    """Alert thresholds: on every change (debounced to 1 s) and every ALERT_INTERVAL_S."""
    engine = app.runtime.alerts
    if not engine.due(time.monotonic()):
        return
    try:
        await engine.evaluate(datetime.now(UTC), time.monotonic())
    except Exception:  # the figures are unreachable now; the next tick tries again
        log.exception("alert evaluation failed")


@app.timer(interval=settings.redis_watch_interval_s, on_leader=True)
async def watch_redis() -> None:
    """Rebuild Redis from PostgreSQL by itself after it lost its data."""
    if not settings.auto_rebuild:
        return
    try:
        await app.runtime.watch.check()
    except Exception as exc:  # Redis unreachable: the next tick looks again
        log.warning("Redis watch could not check the sentinel: %r", exc)


@app.timer(interval=settings.watchdog_interval_s)
async def consumer_watchdog() -> None:
    """Exit for the supervisor when owned partitions stop moving while lag grows."""
    if not settings.watchdog_stall_s:
        return
    runtime = app.runtime
    sources = {
        session_topic.get_topic_name(),
        inference_topic.get_topic_name(),
        synthesis_topic.get_topic_name(),
    }
    assigned = [(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in sources]
    if not assigned:
        return
    try:
        ends = await runtime.end_offsets(assigned)
        positions = await processed_positions(runtime.pool, settings.app_id)
    except Exception as exc:  # the broker or the database is away: not a stall of ours
        log.info("watchdog: cannot read offsets now: %r", exc)
        return
    retrying = any(p.retrying for p in (runtime.sessions, runtime.inference, runtime.synthesis))
    stalls = runtime.watchdog.observe(assigned, ends, positions, retrying)
    if stalls:
        log.error(
            "watchdog: consumer stalled (%s); exiting with status %d so the supervisor"
            " restarts the worker from the committed offsets",
            "; ".join(s.describe() for s in stalls),
            EXIT_STALLED,
        )
        logging.shutdown()
        os._exit(EXIT_STALLED)


@app.timer(interval=settings.heartbeat_interval_s)
async def write_heartbeat() -> None:
    """Tell `rpcache check` this worker's loop runs and reaches PostgreSQL."""
    await _write_beat(app.runtime, starting=not app.consuming)


async def _write_beat(runtime: Runtime, *, starting: bool) -> None:
    try:
        async with (
            asyncio.timeout(settings.heartbeat_interval_s),
            runtime.pool.acquire() as conn,
        ):
            await heartbeat.beat(conn, settings, starting=starting)
    except Exception as exc:  # PostgreSQL away: the beat goes stale, the check says so
        log.warning("heartbeat not written: %r", exc)


async def _refuse_to_start_without_access() -> None:
    """Exit 78 with one line per server that refuses our credentials or TLS
    (streams/worker/preflight.py); a server that does not answer yet is waited for."""
    found = await refusals(settings, settings.check_timeout_s)
    if not found:
        return
    for line in found:
        log.error("%s", line)
    log.error("rpcache worker cannot start: exiting with status %d", EXIT_CONFIG)
    logging.shutdown()
    os._exit(EXIT_CONFIG)


async def _heartbeat_stopped(runtime: Runtime) -> None:
    try:
        async with asyncio.timeout(2.0), runtime.pool.acquire() as conn:
            await heartbeat.stopped(conn, settings)
    except Exception as exc:  # best effort: a stale beat says the same, later
        log.warning("heartbeat: could not record the stop: %r", exc)


@app.timer(interval=30.0)
async def flush_dead_letters() -> None:
    """Publish dead letters a crash left in the PostgreSQL outbox."""
    await app.runtime.sessions.flush_dead_letters()


import agents  # noqa: E402,F401  (registers the agents on `app`)
