"""The sink against real Redis servers: a failed target keeps only what did not land."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from streams.projections import HashWrite, RedisOp, StringWrite
from streams.redis_targets import RedisTargets
from streams.settings import Settings
from streams.sinks.redis import write_by_target
from tests.integration.conftest import free_port
from tests.integration.conftest import test_redis as redis_client

pytestmark = pytest.mark.integration

DB = 1
"""A Redis db no other non-chaos test uses."""


def _ops(n: int) -> list[RedisOp]:
    expire = int((datetime.now(UTC) + timedelta(minutes=5)).timestamp() * 1000)
    ops: list[RedisOp] = []
    for i in range(n):
        ops.append(HashWrite(f"session:sink-{i}", {"status": "active"}, expire))
        ops.append(StringWrite(f"ai_response:sink-{i}", "{}", expire))
    return ops


async def test_a_failed_target_leaves_only_its_writes_to_resend(settings: Settings) -> None:
    base = settings.redis_url.get_secret_value().rsplit("/", 1)[0]
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    local = settings.model_copy(
        update={
            "redis_url": SecretStr(f"{base}/{DB}"),
            "redis_ai_url": SecretStr(dead),
        }
    )
    check = redis_client(f"{base}/{DB}")
    await check.flushdb()
    targets = RedisTargets.from_settings(local, socket_connect_timeout=1)
    ops = _ops(50)
    try:
        with pytest.raises(Exception) as raised:
            await write_by_target(targets, ops)
        assert "ConnectionError" in type(raised.value).__name__
        assert [op.key for op in ops] == [f"ai_response:sink-{i}" for i in range(50)]
        landed = await check.keys("session:sink-*")
        assert len(landed) == 50  # the session target took its half in the same call
        assert await check.exists("ai_response:sink-0") == 0
    finally:
        await check.flushdb()
        await check.aclose()
        await targets.aclose()


async def test_a_successful_write_leaves_the_list_as_given(settings: Settings) -> None:
    base = settings.redis_url.get_secret_value().rsplit("/", 1)[0]
    local = settings.model_copy(update={"redis_url": SecretStr(f"{base}/{DB}")})
    check = redis_client(f"{base}/{DB}")
    targets = RedisTargets.from_settings(local)
    ops = _ops(3)
    try:
        await write_by_target(targets, ops)
        assert len(ops) == 6
        assert await check.exists(*(op.key for op in ops)) == 6
    finally:
        await check.flushdb()
        await check.aclose()
        await targets.aclose()
