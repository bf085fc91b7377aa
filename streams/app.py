"""The Faust app and its topics; the agents and timers registered on it.

Run it with `rpcache worker` or `faust -A streams.app worker -l info`.
Values are consumed raw (bytes): decoding is ours, so that bad input becomes a
dead letter instead of a Faust deserialisation crash.

One agent per source topic (`schemas.keys.AGENT_TOPICS`, agents/) and the
worker's timers (streams/worker/timers.py) are registered here, from their
tables: this module imports them, they never import it.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from agents import agent_for
from schemas.keys import AGENT_TOPICS, DEAD_LETTER_TOPIC
from streams.observe import web
from streams.observe.monitor import Monitor
from streams.read.warmup import warmup
from streams.settings import get_settings
from streams.worker import gc_policy
from streams.worker.faust_options import faust_options, raw_topic
from streams.worker.kafka_transport import Transport as KafkaTransport
from streams.worker.preflight import exit_unless_admitted
from streams.worker.runtime import Runtime
from streams.worker.timers import TIMERS, guarded, heartbeat_stopped, write_beat

log = logging.getLogger(__name__)
settings = get_settings()


class RpcacheApp(faust.App):
    """Faust app that opens rpcache's connections before the agents start."""

    runtime: Runtime
    observer: Monitor
    consuming = False
    """Set once the first partition assignment is done: heartbeats stop saying "starting"."""

    async def on_first_start(self) -> None:
        """Runs before the web server, the consumer and the agents start (mode's Service)."""
        await super().on_first_start()
        await exit_unless_admitted(settings, settings.check_timeout_s)
        self.runtime = await Runtime.start(settings, self._publish)
        try:  # a fresh Redis beside a fresh database lost nothing (streams/read/rebuild.py)
            if settings.auto_rebuild and await self.runtime.watch.mark_fresh():
                log.info("fresh start: PostgreSQL holds nothing yet; Redis marked as loaded")
        except Exception:  # the leader's check decides later, as it would have
            log.exception("could not mark a fresh Redis at start")
        # From now on `rpcache check` and /dashboard see this run, not the row
        # the previous one left ("stopped", its old pid).
        await write_beat(self.runtime, starting=True)
        self.observer = Monitor(self.runtime)
        log.info("rpcache worker configured: %s", settings.redacted())
        if settings.warmup_on_start:
            try:
                await warmup(self.runtime.pool, self.runtime.targets, settings.warmup_top_n)
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
            gc_policy.settle_after_start()  # the start-up's objects live as long as we do
            self.consuming = True
            await write_beat(self.runtime, starting=False)

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
            await heartbeat_stopped(runtime)
            await self.observer.close()
            await runtime.close()


app = RpcacheApp(settings.app_id, **faust_options(settings))


web.install(app)  # /metrics, /dashboard, /dashboard.json


source_topics = {
    name: raw_topic(app, settings.topic_prefix, suffix) for name, suffix in AGENT_TOPICS.items()
}
"""The source topic of each agent, by agent name."""
dead_letter_topic = raw_topic(app, settings.topic_prefix, DEAD_LETTER_TOPIC)

for _name, _topic in source_topics.items():
    app.agent(_topic, name=_name)(agent_for(_name))

for _timer in TIMERS:
    app.timer(interval=_timer.interval_s(settings), on_leader=_timer.on_leader)(guarded(_timer.run))
