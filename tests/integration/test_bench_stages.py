"""`rpcache bench --only stages` on the real PostgreSQL and Redis: the write path
alone, stage by stage (streams/tools/bench/stages.py)."""

from __future__ import annotations

import uuid

import pytest

from streams.settings import Settings
from streams.tools.bench.stages import run_stages
from tests.integration.conftest import on_one_redis

pytestmark = [pytest.mark.integration, on_one_redis()]

REDIS_DB = 14
"""A Redis db no other test uses: the benchmark empties it before and after."""


async def test_every_event_goes_through_every_step_and_is_counted_once(
    settings: Settings,
) -> None:
    figures = await run_stages(
        settings, uuid.uuid4().hex[:6], REDIS_DB, 3_000, users=60, batch_max=200
    )
    by_topic = {f.topic: f for f in figures}
    assert set(by_topic) == {"session-events", "inference-events", "synthesis-events", "all"}
    # the first batch of each topic warms up and is not counted; the rest all are
    assert sum(f.events for t, f in by_topic.items() if t != "all") == by_topic["all"].events
    assert 0 < by_topic["all"].events < 3_000
    for figure in figures:
        assert min(figure.decode_us, figure.postgres_us, figure.redis_us) > 0
        assert figure.total_us >= figure.decode_us + figure.postgres_us + figure.redis_us
        assert figure.wall_us >= figure.total_us * 0.5
        # the stack's PostgreSQL is local: its backends worked on every topic's batches
        assert figure.server_us is not None and figure.server_us > 0
