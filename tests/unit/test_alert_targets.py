"""The alerts' Redis rules read every Redis target (SPEC §8), the worst one decides."""

from __future__ import annotations

from typing import Any

from streams.observe.alerts import AlertEngine
from streams.redis_targets import RedisTargets, parse_target
from streams.settings import Settings


class FakeRedis:
    """INFO memory / clients of one Redis, or a failure."""

    def __init__(self, used: int, maxmemory: int, clients: int, down: bool = False) -> None:
        self.sections = {
            "memory": {"used_memory": used, "maxmemory": maxmemory},
            "clients": {"connected_clients": clients},
        }
        self.down = down

    async def info(self, section: str) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("refused")
        return self.sections[section]


def engine(masters: dict[str, Any]) -> AlertEngine:
    target = parse_target("redis://localhost:6379/0")
    targets = RedisTargets(
        {f: target for f in masters},  # type: ignore[misc]
        masters,  # type: ignore[arg-type]
        dict.fromkeys(masters),  # type: ignore[arg-type]
    )

    async def publish(topic: str, key: bytes | None, value: bytes) -> None:
        return None

    return AlertEngine(Settings(), None, targets, None, publish, "alerts")  # type: ignore[arg-type]


async def test_the_fullest_target_and_the_busiest_decide() -> None:
    readings = await engine(
        {
            "sessions": FakeRedis(10, 100, 7),
            "ai": FakeRedis(50, 100, 3),
            "voice": FakeRedis(95, 100, 2),  # a full voice master is critical on its own
        }
    )._redis_readings()
    assert readings["redis_memory_ratio"].value == 0.95
    assert readings["redis_connected_clients"].value == 7


async def test_a_target_that_does_not_answer_is_left_out() -> None:
    readings = await engine(
        {
            "sessions": FakeRedis(10, 100, 7),
            "ai": FakeRedis(50, 100, 3),
            "voice": FakeRedis(0, 0, 0, down=True),
        }
    )._redis_readings()
    assert readings["redis_memory_ratio"].value == 0.5


async def test_one_shared_redis_is_read_once() -> None:
    shared = FakeRedis(20, 100, 4)
    readings = await engine({"sessions": shared, "ai": shared, "voice": shared})._redis_readings()
    assert readings["redis_memory_ratio"].value == 0.2
