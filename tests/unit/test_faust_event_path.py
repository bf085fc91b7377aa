"""Faust's per-event path as rpcache specialises it (streams/worker/faust_event_path.py
and the producer buffer in streams/worker/kafka_transport.py); no server.

`RawSchema` must give the agents exactly the events Faust's own raw schema
gives, for every kind of key and value; `LeanMonitor` must keep what Faust
itself reads (`stream_inbound_time`); the buffer's ebb check must still
flush a buffer over its limit. The digests fail when faust-streaming changes
a method these replace: re-read it before updating them.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from typing import Any

import faust
import pytest
from faust.sensors import Monitor
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message

from streams.worker.faust_event_path import LeanMonitor, RawSchema
from streams.worker.kafka_transport import _ProducerBuffer

FAUST_SHA256 = {
    (faust.Schema, "compile"): "bd271ec59690d13ea72e0b8591acd0a5d7d8ed5139fde8f299b4649e7fcc186e",
    (
        ProducerBuffer,
        "wait_until_ebb",
    ): "191a87d5d9c664673e995fcdac961a3afe34bd22f2dbc2247817cf2910991e1a",
    (ProducerBuffer, "size"): "4cf1044f773f41a5ba641433bd1571340b8616e58defb8757ded18a03071d97f",
    (
        Monitor,
        "on_stream_event_in",
    ): "de452defd9dad12eb30785e8c2bffe78e5cd6fde4edb52943a53188dd4812e69",
    (
        AIOKafkaConsumerThread,
        "_verify_aiokafka_event_path",
    ): "b6c2d4770cb2b5f343111db637bd6bfa59025d87d4836ca8cc447b0da3af7e49",
}
"""sha256 of faust-streaming 0.15.3's methods the specialisations replace or rely on."""


def _source(owner: type, name: str) -> str:
    member = inspect.getattr_static(owner, name)
    function = member.fget if isinstance(member, property) else member
    return textwrap.dedent(inspect.getsource(function))


@pytest.mark.parametrize(("owner", "name"), sorted(FAUST_SHA256, key=str))
def test_faust_is_the_one_these_were_written_for(owner: type, name: str) -> None:
    digest = hashlib.sha256(_source(owner, name).encode()).hexdigest()
    assert digest == FAUST_SHA256[(owner, name)], (
        f"faust-streaming changed {owner.__name__}.{name}: re-read it against "
        "streams/worker/faust_event_path.py and kafka_transport.py, then update the digest"
    )


@pytest.fixture(scope="module")
def app() -> faust.App:
    return faust.App("test-event-path", broker="kafka://127.0.0.1:1")


def _message(key: bytes | None, value: bytes | None) -> Message:
    return Message(
        "rp.sessions",
        3,
        41,
        1_700_000_000.0,
        0,
        [("h", b"1")],
        key,
        value,
        None,
        tp=TP("rp.sessions", 3),
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"user-1", b'{"type": "session.started"}'),
        (None, b"{}"),
        (b"user-1", None),  # a tombstone: rpcache dead-letters it, Faust must deliver it
        (b"", b""),
        (b"\x00\xff", b"\xff\xfe not utf-8"),
    ],
)
async def test_raw_schema_gives_the_events_fausts_raw_schema_gives(
    app: faust.App, key: bytes | None, value: bytes | None
) -> None:
    fausts = faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    ).compile(app)
    ours = RawSchema().compile(app)
    message = _message(key, value)
    expected: Any = await fausts(message, propagate=True)
    got: Any = await ours(message, propagate=True)
    assert type(got) is type(expected)
    assert (got.key, got.value, got.headers, got.message, got.app) == (
        expected.key,
        expected.value,
        expected.headers,
        expected.message,
        expected.app,
    )
    assert RawSchema().key_type is bytes and RawSchema().value_serializer == "raw"


def test_lean_monitor_keeps_what_faust_reads_and_counts_nothing_else() -> None:
    monitor = LeanMonitor()
    tp = TP("rp.sessions", 0)
    message = _message(b"k", b"v")
    monitor.on_message_in(tp, 5, message)
    state = monitor.on_stream_event_in(tp, 5, Any, Any)  # type: ignore[arg-type]
    monitor.on_stream_event_out(tp, 5, Any, Any, state)  # type: ignore[arg-type]
    monitor.on_message_out(tp, 5, message)
    assert tp in monitor.stream_inbound_time  # read by the consumer thread's stall warning
    assert (monitor.messages_received_total, monitor.events_total) == (0, 0)
    assert monitor.messages_active == monitor.events_active == 0


class _Conf:
    producer_threaded = False


class _App:
    conf = _Conf()


async def test_the_buffer_flushes_only_when_over_its_limit() -> None:
    buffer = _ProducerBuffer()
    buffer.app = _App()  # type: ignore[assignment]
    flushed: list[int | None] = []

    async def flush_atmost(n: int | None) -> int:
        flushed.append(n)
        return 0

    buffer.flush_atmost = flush_atmost  # type: ignore[method-assign]
    for _ in range(buffer.max_messages):
        buffer.pending.put_nowait(object())
    await buffer.wait_until_ebb()
    assert flushed == []  # at the limit: Faust's rule (size > max_messages) does not flush
    buffer.pending.put_nowait(object())
    await buffer.wait_until_ebb()
    assert flushed == [buffer.max_messages]
