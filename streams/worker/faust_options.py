"""The Faust app settings of the worker, and its raw topics.

One place for them because two apps use them: the worker's (`streams.app`)
and the benchmark's Faust floor (`streams.tools.bench.faust_floor`), which
must consume exactly as the worker does for its figure to mean anything.
"""

from __future__ import annotations

from typing import Any

import faust

from schemas.keys import topic_name
from streams.security import faust_credentials
from streams.settings import Settings
from streams.worker.faust_event_path import LeanMonitor, RawSchema
from streams.worker.linger_batching import LingerStream

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Broker `message.max.bytes` of the stack and docker-compose."""


def faust_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `faust.App` (after the app id) for the worker's settings.

    Values are consumed raw (bytes): decoding is rpcache's, so that bad input
    becomes a dead letter instead of a Faust deserialisation crash.
    """
    return {
        "broker": [f"kafka://{server}" for server in settings.kafka_servers],
        "store": "memory://",
        "datadir": settings.worker_data_dir,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.topic_partitions,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_max_request_size": MAX_MESSAGE_BYTES,
        "consumer_max_fetch_size": MAX_MESSAGE_BYTES,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_session_timeout_s / 5,
        "broker_rebalance_timeout": settings.kafka_session_timeout_s * 2,
        "web_enabled": settings.worker_web_enabled,
        "web_port": settings.worker_web_port,
        "web_bind": settings.worker_web_bind,
        "web_in_thread": False,
        "broker_credentials": faust_credentials(settings),
        "Monitor": LeanMonitor,
        "Stream": LingerStream,
    }


def raw_topic(app: faust.App, prefix: str, suffix: str) -> Any:
    """The topic `prefix + suffix` of `app`, keys and values as raw bytes
    (`RawSchema`: decoded without Faust's serializer registry)."""
    return app.topic(topic_name(prefix, suffix), schema=RawSchema())
