"""Each Redis target's figures (streams/observe/redis_info.py, SPEC §8): INFO parsed,
labelled by the target's families, aggregated for the alerts, exported per target."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.observe.metrics import (
    RedisFigures,
    RedisWorst,
    Snapshot,
    SnapshotCollector,
    TargetFigures,
)
from streams.observe.monitor import redis_json
from streams.observe.redis_info import node_address, parse_info, read_targets, worst
from streams.read.routes import targets_from_settings
from streams.redis_targets import RedisTargets, parse_target, target_label
from streams.settings import Settings
from tests.unit.test_metrics import samples

SENTINELS = "redis+sentinel://127.0.0.1:26391,127.0.0.1:26392"


# --- INFO → figures ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("info", "db", "expected"),
    [
        (  # a master with keys in its db
            {
                "used_memory": 1048576, "maxmemory": 268435456, "connected_clients": 7,
                "evicted_keys": 3, "maxmemory_policy": "allkeys-lfu", "role": "master",
                "db4": {"keys": 12, "expires": 12, "avg_ttl": 1000},
            },
            4,
            RedisFigures(1048576, 268435456, 7, 3, 12, "allkeys-lfu", "n:1", "master"),
        ),
        (  # Redis says slave; keys of another db do not count
            {
                "used_memory": 10, "maxmemory": 0, "connected_clients": 1, "evicted_keys": 0,
                "maxmemory_policy": "noeviction", "role": "slave", "db0": {"keys": 5},
            },
            9,
            RedisFigures(10, 0, 1, 0, 0, "noeviction", "n:1", "replica"),
        ),
        (  # fields missing: 0 and ""
            {"used_memory": "20"},
            0,
            RedisFigures(20, 0, 0, 0, 0, "", "n:1", ""),
        ),
    ],
)  # fmt: skip
def test_parse_info(info: dict[str, Any], db: int, expected: RedisFigures) -> None:
    assert parse_info(info, db, "n:1") == expected


@pytest.mark.parametrize(
    ("connection", "address"),
    [
        (SimpleNamespace(host="127.0.0.1", port=6393), "127.0.0.1:6393"),
        (SimpleNamespace(path="/run/redis.sock"), "unix:/run/redis.sock"),
        (SimpleNamespace(host=None, port=None), "?"),
        (None, "?"),
    ],
)
def test_node_address(connection: object, address: str) -> None:
    assert node_address(connection) == address


# --- labels: the targets' families, as the reader names its breakers ---------------------
@pytest.mark.parametrize(
    ("urls", "labels"),
    [
        ({}, ["sessions+ai+voice"]),
        (
            {
                "redis_sessions_url": f"{SENTINELS}/sessions/9",
                "redis_ai_url": f"{SENTINELS}/ai/9",
                "redis_voice_url": f"{SENTINELS}/voice/9",
            },
            ["sessions", "ai", "voice"],
        ),
        ({"redis_voice_url": "redis://127.0.0.1:6395/0"}, ["sessions+ai", "voice"]),
        ({"redis_ai_url": "redis://127.0.0.1:6393/0"}, ["sessions+voice", "ai"]),
        (  # two families given the same URL share one target
            {"redis_ai_url": "redis://v:6395/0", "redis_voice_url": "redis://v:6395/0"},
            ["sessions", "ai+voice"],
        ),
    ],
)
async def test_target_labels_are_the_readers_breaker_names(
    urls: dict[str, str], labels: list[str]
) -> None:
    settings = Settings(**urls)  # type: ignore[arg-type]
    targets = RedisTargets.from_settings(settings)  # no I/O until a command
    try:
        assert [target_label(families) for families, _ in targets.distinct()] == labels
        reader_names = {t.name for t in targets_from_settings(settings).values()}
        assert reader_names == set(labels)
    finally:
        await targets.aclose()


# --- reading every target ------------------------------------------------------------------
class FakeRedis:
    """One target's master: INFO after `delay_s`, or a failure."""

    def __init__(
        self, port: int, used: int = 1, maxmemory: int = 100, clients: int = 1, **kw: Any
    ) -> None:
        self.info_reply = {
            "used_memory": used, "maxmemory": maxmemory, "connected_clients": clients,
            "role": "master", "maxmemory_policy": "allkeys-lru", "db9": {"keys": port % 10},
        }  # fmt: skip
        self.error: Exception | None = kw.get("error")
        self.delay_s: float = kw.get("delay_s", 0.0)
        self.connection = SimpleNamespace(host="127.0.0.1", port=port, db=9)
        self.reads = 0
        self.closed = 0

    def client(self) -> FakeRedis:
        return self

    async def info(self) -> dict[str, Any]:
        self.reads += 1
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.info_reply

    async def aclose(self) -> None:
        self.closed += 1


def targets_of(masters: dict[str, Any]) -> RedisTargets:
    target = parse_target("redis://localhost:6379/9")
    return RedisTargets(
        dict.fromkeys(masters, target),  # type: ignore[arg-type]
        masters,  # type: ignore[arg-type]
        dict.fromkeys(masters),  # type: ignore[arg-type]
    )


async def test_every_target_is_read_and_one_down_hides_nothing_else() -> None:
    sessions, ai = FakeRedis(6391, clients=4), FakeRedis(6393, used=50)
    voice = FakeRedis(6395, error=ConnectionError("Error 111 connecting to 127.0.0.1:6395."))
    got = await read_targets(targets_of({"sessions": sessions, "ai": ai, "voice": voice}), 1.0)
    assert [(t.target, t.up) for t in got] == [("sessions", True), ("ai", True), ("voice", False)]
    assert got[0].figures == RedisFigures(
        1, 100, 4, 0, 1, "allkeys-lru", "127.0.0.1:6391", "master"
    )
    assert got[1].figures is not None and got[1].figures.node == "127.0.0.1:6393"
    assert got[2].error is not None and "Error 111" in got[2].error
    assert (sessions.closed, ai.closed, voice.closed) == (1, 1, 1)  # connections given back


async def test_a_target_that_hangs_is_down_after_its_timeout_only() -> None:
    hung = FakeRedis(6393, delay_s=5)
    started = asyncio.get_running_loop().time()
    got = await read_targets(targets_of({"sessions": FakeRedis(6391), "ai": hung}), 0.2)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert [(t.target, t.up) for t in got] == [("sessions", True), ("ai", False)]
    assert got[1].error == "TimeoutError()"


async def test_one_shared_redis_is_one_target_read_once() -> None:
    shared = FakeRedis(6379)
    got = await read_targets(targets_of({"sessions": shared, "ai": shared, "voice": shared}))
    assert [t.target for t in got] == ["sessions+ai+voice"]
    assert shared.reads == 1


# --- the alerts' figures -------------------------------------------------------------------
def up(target: str, used: int, maxmemory: int, clients: int) -> TargetFigures:
    return TargetFigures(target, RedisFigures(used, maxmemory, clients, 0))


DOWN = TargetFigures("voice", None, "TimeoutError()")


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ([], RedisWorst()),
        ([DOWN], RedisWorst()),
        (
            [up("sessions", 10, 100, 7), up("ai", 50, 100, 3), up("voice", 95, 100, 2)],
            RedisWorst(0.95, "voice", 7, "sessions"),
        ),
        (  # a target down is left out, whatever it held before
            [up("sessions", 10, 100, 7), up("ai", 50, 100, 30), DOWN],
            RedisWorst(0.5, "ai", 30, "ai"),
        ),
        (  # no maxmemory: no ratio, but clients still count
            [up("sessions+ai+voice", 10, 0, 4)],
            RedisWorst(None, None, 4, "sessions+ai+voice"),
        ),
        (  # a tie: the first target, in family order
            [up("sessions", 50, 100, 5), up("ai", 5, 10, 5)],
            RedisWorst(0.5, "sessions", 5, "sessions"),
        ),
    ],
)
def test_worst(targets: list[TargetFigures], expected: RedisWorst) -> None:
    assert worst(targets) == expected


# --- /dashboard.json and /metrics ------------------------------------------------------------
def test_redis_json_one_row_per_target() -> None:
    figures = RedisFigures(512, 1024, 3, 2, 40, "volatile-ttl", "127.0.0.1:6391", "master")
    got = redis_json([TargetFigures("sessions", figures), up("ai", 1, 0, 9), DOWN])
    assert got["memory_ratio"] == 0.5 and got["memory_target"] == "sessions"
    assert (got["connected_clients"], got["clients_target"]) == (9, "ai")
    assert got["down"] == ["voice"]
    assert got["targets"][0] == {
        "target": "sessions", "up": True, "node": "127.0.0.1:6391", "role": "master",
        "used_memory": 512, "maxmemory": 1024, "memory_ratio": 0.5, "policy": "volatile-ttl",
        "connected_clients": 3, "evicted_keys": 2, "keys": 40,
    }  # fmt: skip
    assert got["targets"][1]["memory_ratio"] is None
    assert got["targets"][2] == {"target": "voice", "up": False, "error": "TimeoutError()"}


def test_metrics_per_target_and_a_target_down() -> None:
    registry = CollectorRegistry()
    collector = SnapshotCollector()
    registry.register(collector)
    collector.snapshot = Snapshot(
        taken_at=datetime(2026, 11, 30, tzinfo=UTC),
        redis=[
            TargetFigures(
                "sessions",
                RedisFigures(512, 1024, 3, 2, 40, "volatile-ttl", "127.0.0.1:6391", "master"),
            ),
            TargetFigures(
                "ai", RedisFigures(64, 0, 1, 0, 0, "allkeys-lru", "127.0.0.1:6394", "replica")
            ),
            DOWN,
        ],
        sources_up={"redis": False},
    )
    got = samples(registry)

    def g(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert [g("rpcache_redis_up", target=t) for t in ("sessions", "ai", "voice")] == [1, 1, 0]
    assert g("rpcache_redis_used_memory_bytes", target="sessions") == 512
    assert g("rpcache_redis_maxmemory_bytes", target="ai") == 0
    assert g("rpcache_redis_connected_clients", target="sessions") == 3
    assert g("rpcache_redis_evicted_keys_total", target="sessions") == 2
    assert g("rpcache_redis_keys", target="sessions") == 40
    info = {
        dict(labels)["target"]: dict(labels) for name, labels in got if name == "rpcache_redis_info"
    }
    assert info == {
        "sessions": {"target": "sessions", "node": "127.0.0.1:6391", "role": "master",
                     "maxmemory_policy": "volatile-ttl"},
        "ai": {"target": "ai", "node": "127.0.0.1:6394", "role": "replica",
               "maxmemory_policy": "allkeys-lru"},
    }  # fmt: skip
    # the target down: its up series only
    assert [n for n, labels in got if ("target", "voice") in labels] == ["rpcache_redis_up"]
    assert g("rpcache_source_up", source="redis") == 0
    assert not math.isnan(g("rpcache_redis_up", target="voice") or 0.0)


# --- a cluster target: one row per master ----------------------------------------------------
def _cluster() -> Any:
    from schemas.keys import DESIGN_SLOT_RANGES as D
    from tests.unit.test_cluster_masters import FakeCluster

    return FakeCluster(
        ("127.0.0.1:6401", [D["sessions"]], ("127.0.0.1:6404",)),
        ("127.0.0.1:6402", [D["ai"]], ("127.0.0.1:6405",)),
        ("127.0.0.1:6403", [D["voice"]], ("127.0.0.1:6406",)),
    )


@pytest.mark.parametrize(
    ("replies", "rows"),
    [
        (  # every master answers: its own figures, in slot order
            {
                "127.0.0.1:6401": {"used_memory": 5, "maxmemory": 100, "connected_clients": 3, "maxmemory_policy": "volatile-ttl", "role": "master", "db0": {"keys": 40}},
                "127.0.0.1:6402": {"used_memory": 90, "maxmemory": 100, "connected_clients": 1, "evicted_keys": 7, "maxmemory_policy": "allkeys-lru", "role": "master", "db0": {"keys": 12}},
                "127.0.0.1:6403": {"used_memory": 1, "maxmemory": 100, "connected_clients": 9, "maxmemory_policy": "allkeys-lfu", "role": "master"},
            },
            [
                ("sessions+ai+voice@127.0.0.1:6401", RedisFigures(5, 100, 3, 0, 40, "volatile-ttl", "127.0.0.1:6401", "master")),
                ("sessions+ai+voice@127.0.0.1:6402", RedisFigures(90, 100, 1, 7, 12, "allkeys-lru", "127.0.0.1:6402", "master")),
                ("sessions+ai+voice@127.0.0.1:6403", RedisFigures(1, 100, 9, 0, 0, "allkeys-lfu", "127.0.0.1:6403", "master")),
            ],
        ),
        (  # one master refuses: a down row of its own, the others as usual
            {"127.0.0.1:6402": ConnectionError("Error 111 connecting to 127.0.0.1:6402.")},
            [
                ("sessions+ai+voice@127.0.0.1:6401", True),
                ("sessions+ai+voice@127.0.0.1:6402", "Error 111"),
                ("sessions+ai+voice@127.0.0.1:6403", True),
            ],
        ),
        (  # one master hangs: down after the budget, the others answered
            {"127.0.0.1:6403": 5.0},
            [
                ("sessions+ai+voice@127.0.0.1:6401", True),
                ("sessions+ai+voice@127.0.0.1:6402", True),
                ("sessions+ai+voice@127.0.0.1:6403", "TimeoutError()"),
            ],
        ),
    ],
)  # fmt: skip
async def test_a_cluster_target_is_one_row_per_master(
    monkeypatch: pytest.MonkeyPatch, replies: dict[str, Any], rows: list[tuple[str, Any]]
) -> None:
    from streams.observe import redis_info

    cluster = _cluster()
    monkeypatch.setattr(redis_info, "RedisCluster", type(cluster))
    for node, reply in replies.items():
        if isinstance(reply, float):
            cluster.delays[node] = reply
        elif isinstance(reply, dict):
            cluster.infos[node] = reply
        else:
            cluster.infos[node] = reply
    started = asyncio.get_running_loop().time()
    got = await read_targets(targets_of(dict.fromkeys(("sessions", "ai", "voice"), cluster)), 0.3)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert [t.target for t in got] == [name for name, _ in rows]
    for row, (_, want) in zip(got, rows, strict=True):
        if isinstance(want, RedisFigures):
            assert row.figures == want
        elif want is True:
            assert row.up
        else:
            assert not row.up and row.error is not None and want in row.error


async def test_a_cluster_without_a_slot_map_is_one_row_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.observe import redis_info

    cluster = _cluster()
    cluster.nodes_manager.slots_cache = {}
    monkeypatch.setattr(redis_info, "RedisCluster", type(cluster))
    got = await read_targets(
        targets_of({"sessions": FakeRedis(6391), "ai": cluster, "voice": cluster}), 0.3
    )
    assert [(t.target, t.up) for t in got] == [("sessions", True), ("ai+voice", False)]
    assert got[1].error is not None and "no slot map" in got[1].error


def test_worst_and_the_dashboard_cover_every_master() -> None:
    rows = [
        TargetFigures("sessions+ai+voice@127.0.0.1:6401", RedisFigures(10, 100, 3, 0)),
        TargetFigures("sessions+ai+voice@127.0.0.1:6402", RedisFigures(95, 100, 1, 0)),
        TargetFigures("sessions+ai+voice@127.0.0.1:6403", None, "TimeoutError()"),
    ]
    assert worst(rows) == RedisWorst(
        0.95, "sessions+ai+voice@127.0.0.1:6402", 3, "sessions+ai+voice@127.0.0.1:6401"
    )
    got = redis_json(rows)
    assert [r["target"] for r in got["targets"]] == [r.target for r in rows]
    assert got["down"] == ["sessions+ai+voice@127.0.0.1:6403"]
