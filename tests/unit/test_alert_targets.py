"""The alerts' Redis rules read every Redis target (SPEC §8), the worst one decides."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streams.observe.alerts import AlertEngine
from streams.redis_targets import RedisTargets, parse_target
from streams.settings import Settings


class FakeRedis:
    """INFO of one Redis (memory and clients), or a failure; `client()` is its one
    connection, as `streams.observe.redis_info.read_target` uses it."""

    def __init__(self, used: int, maxmemory: int, clients: int, down: bool = False) -> None:
        self.fields = {"used_memory": used, "maxmemory": maxmemory, "connected_clients": clients}
        self.down = down
        self.connection = SimpleNamespace(host="127.0.0.1", port=6379, db=0)
        self.reads = 0

    def client(self) -> FakeRedis:
        return self

    async def info(self) -> dict[str, Any]:
        self.reads += 1
        if self.down:
            raise ConnectionError("refused")
        return self.fields

    async def aclose(self) -> None:
        return None


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
    assert shared.reads == 1


async def test_no_target_answering_gives_no_reading() -> None:
    down = FakeRedis(0, 0, 0, down=True)
    assert await engine({"sessions": down, "ai": down, "voice": down})._redis_readings() == {}
