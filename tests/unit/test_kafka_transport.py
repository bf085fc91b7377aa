"""The drain-loop override (streams/worker/kafka_transport.py) copies Faust's loop.

If faust-streaming changes `Consumer._drain_messages`, this fails: re-read
Faust's new loop against the override (offsets, gaps, acks, commits, flow
checks) before updating the digest.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap

from faust.transport.consumer import Consumer

from streams.worker.kafka_transport import Transport

FAUST_DRAIN_LOOP_SHA256 = "8f35dd7a11144daa6ec9a3739a497b03a9dd6b57cca18aa861bb4a549400fc68"
"""sha256 of faust-streaming 0.15.3's `Consumer._drain_messages` source."""


def test_faust_drain_loop_is_the_one_the_override_was_written_for() -> None:
    source = textwrap.dedent(inspect.getsource(Consumer._drain_messages))
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_DRAIN_LOOP_SHA256, (
        "Faust's drain loop changed: compare it with _Consumer._drain_messages/_deliver"
    )


def test_the_worker_consumer_uses_the_override() -> None:
    consumer = Transport.Consumer
    assert consumer._drain_messages is not Consumer._drain_messages
    assert consumer._drain_messages.__qualname__ == "_Consumer._drain_messages"
