"""Faust's per-event path, specialised where rpcache uses none of what it pays for.

Why (issue 15): after the drain-loop override (streams/worker/kafka_transport.py),
Faust alone, doing nothing with the events, still cost 40.7 µs of CPU per
event (the bench's "Faust floor", 200 000 events, 2026-12-05). A py-spy
profile of that floor (`--gil`, 100 Hz) put a fifth of it in bookkeeping
rpcache never reads, on every event:

- 9.9 % in `Schema.compile.<locals>.decode`: the serializer registry's `raw`
  codec (which returns the bytes it gets), then `App.create_event`, which
  looks up `conf.Event` through `SettingsRegistry.__getattribute__`;
- 6.3 % in `ProducerBuffer.wait_until_ebb`: its `size` reads
  `conf.producer_threaded` through the same registry, to learn that nothing
  waits to be produced;
- ~8 % in `Monitor.on_message_in`, `on_stream_event_in`, `on_stream_event_out`
  and `on_message_out`: counters, per-stream and per-task names, runtimes,
  for Faust's `/stats` page, which rpcache does not serve.

Each is replaced through an extension point Faust gives, nothing else of
its path is touched:

- `RawSchema` (a `faust.Schema`, given to `app.topic(schema=…)`): the event
  of a raw topic carries the message's key and value as they are, which is
  exactly what Faust's `raw` codec returns; built with the `Event` class
  looked up once.
- `LeanMonitor` (the `Monitor` setting): Faust's monitor without its
  per-event counters. It keeps `stream_inbound_time`, which Faust's consumer
  thread reads to warn of a stream that stopped processing a partition, and
  every other hook (commits, assignments, end offsets, sends) as Faust's.
  rpcache's own figures (Prometheus `/metrics`, `/dashboard`) come from
  `streams.observe`, never from Faust's monitor.
- The producer buffer's ebb check (streams/worker/kafka_transport.py,
  `ProducerBuffer`): the same rule, with the setting read once.

Measured after the change: see README, Performance.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import faust
from faust.sensors import Monitor
from faust.types import TP, EventT, Message, StreamT


class RawSchema(faust.Schema[bytes, bytes]):
    """Keys and values as raw bytes (`key_type=bytes`, serializer `raw`), decoded
    without the serializer registry: the event gets `message.key` and
    `message.value` themselves (a tombstone's None included), as Faust's `raw`
    codec would give them."""

    def __init__(self) -> None:
        super().__init__(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    def compile(
        self,
        app: Any,
        *,
        on_key_decode_error: Any = None,
        on_value_decode_error: Any = None,
        default_propagate: bool = False,
    ) -> Any:
        """Faust's `Schema.compile`: the coroutine function a channel decodes each
        message with. Raw bytes cannot fail to decode, so the error callbacks are
        never called. The `Event` class is looked up at the first message: topics
        are made at import time, before the app's configuration is final."""
        event_class: Any = None

        async def decode(message: Message, *, propagate: bool = default_propagate) -> Any:
            nonlocal event_class
            if event_class is None:
                event_class = app.conf.Event
            return event_class(app, message.key, message.value, message.headers, message)

        return decode


class LeanMonitor(Monitor):
    """Faust's `Monitor` without the per-event counters of its `/stats` page
    (module docstring). Set as the app's `Monitor` (`faust_options`)."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        """Faust counts received messages here; rpcache does not read the counts."""

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        """Only what Faust itself reads: when a stream last took an event of `tp`
        (the consumer thread's "stream stopped processing" warning)."""
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        """Faust times each event here; rpcache times its batches itself."""

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        """Faust times each message here; rpcache does not read it."""
