"""The masters of a cluster target (streams/cluster_masters.py) and the data-loss marker
and rebuild per master (streams/read/rebuild.py, SPEC §8): no server, a fake cluster
client whose slot map and replies the tests set."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from schemas.keys import (
    DESIGN_SLOT_RANGES,
    LOADED_MARKER_KEY,
    ai_response_key_for_hash,
    layout_key,
    own_key,
    session_key,
    voice_key_for_hash,
)
from schemas.slots import SlotRange, key_slot
from streams.cluster_masters import (
    MasterSlots,
    cluster_masters,
    format_ranges,
    home_family,
    masters_of_map,
    overlap,
    slot_ranges,
)
from streams.projections import Delete, RedisOp, StringWrite
from streams.read import rebuild
from streams.read.rebuild import RedisWatch, marker_key
from streams.read.recompute import _split
from streams.read.replay import ReplaySummary
from streams.redis_targets import KEY_FAMILIES, RedisTargets, parse_target
from streams.settings import Settings

R = SlotRange
S, A, V = DESIGN_SLOT_RANGES["sessions"], DESIGN_SLOT_RANGES["ai"], DESIGN_SLOT_RANGES["voice"]


# --- pure helpers ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("slots", "ranges"),
    [
        ([], ()),
        ([5], (R(5, 5),)),
        ([2, 0, 1, 7, 7], (R(0, 2), R(7, 7))),
        (range(5461, 10923), (A,)),
        ([*range(0, 10), *range(11, 20)], (R(0, 9), R(11, 19))),
    ],
)
def test_slot_ranges(slots: Iterable[int], ranges: tuple[SlotRange, ...]) -> None:
    assert slot_ranges(slots) == ranges


@pytest.mark.parametrize(
    ("ranges", "within", "expected"),
    [
        ((S,), A, ()),
        ((R(5000, 5470),), A, (R(5461, 5470),)),
        ((R(5461, 5470), V), A, (R(5461, 5470),)),
        ((R(0, 16383),), V, (V,)),
    ],
)
def test_overlap(
    ranges: tuple[SlotRange, ...], within: SlotRange, expected: tuple[SlotRange, ...]
) -> None:
    assert overlap(ranges, within) == expected


@pytest.mark.parametrize(
    ("ranges", "family"),
    [
        ((), None),
        ((S,), "sessions"),
        ((R(5461, 5470), V), "voice"),  # a few AI slots moved to the voice master
        ((A, V), "ai"),  # a tie: the first in family order
        ((R(0, 99), R(5461, 5600)), "ai"),
    ],
)
def test_home_family(ranges: tuple[SlotRange, ...], family: str | None) -> None:
    assert home_family(ranges) == family


def test_format_ranges() -> None:
    assert format_ranges([R(5461, 5470), R(7, 7)]) == "5461-5470,7"
    assert format_ranges([]) == "none"


def _map(*shards: tuple[str, Iterable[SlotRange], tuple[str, ...]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for master, ranges, replicas in shards:
        for r in ranges:
            for slot in range(r.lo, r.hi + 1):
                out[slot] = [master, *replicas]
    return out


@pytest.mark.parametrize(
    ("slot_map", "masters"),
    [
        ({}, []),
        (  # the design: three masters, a replica each, in slot order
            _map(("n:3", [V], ("n:6",)), ("n:1", [S], ("n:4",)), ("n:2", [A], ("n:5",))),
            [
                MasterSlots("n:1", (S,), ("n:4",)),
                MasterSlots("n:2", (A,), ("n:5",)),
                MasterSlots("n:3", (V,), ("n:6",)),
            ],
        ),
        (  # a reshard: a master serves two ranges; a failed replica is not listed
            _map(
                ("n:1", [S], ()),
                ("n:3", [R(5461, 5470), V], ("n:6",)),
                ("n:2", [R(5471, 10922)], ()),
            ),
            [
                MasterSlots("n:1", (S,), ()),
                MasterSlots("n:3", (R(5461, 5470), V), ("n:6",)),
                MasterSlots("n:2", (R(5471, 10922),), ()),
            ],
        ),
    ],
)
def test_masters_of_map(slot_map: dict[int, list[str]], masters: list[MasterSlots]) -> None:
    assert masters_of_map(slot_map) == masters


# --- a fake cluster client -------------------------------------------------------------
class FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeManager:
    def __init__(self, owner: FakeCluster) -> None:
        self.owner = owner
        self.slots_cache: dict[int, list[FakeNode]] = {}

    async def initialize(self) -> None:
        self.owner.refreshes += 1
        if self.owner.refresh_error is not None:
            raise self.owner.refresh_error


class FakeCluster:
    """Slot map, per-node INFO replies (a dict, an exception, or a delay) and keys per node."""

    def __init__(self, *shards: tuple[str, Iterable[SlotRange], tuple[str, ...]]) -> None:
        self.nodes_manager = FakeManager(self)
        self.refreshes = 0
        self.refresh_error: Exception | None = None
        self.infos: dict[str, Any] = {}
        self.delays: dict[str, float] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, str] = {}
        nodes: dict[str, FakeNode] = {}
        for master, ranges, replicas in shards:
            listed = [nodes.setdefault(n, FakeNode(n)) for n in (master, *replicas)]
            for r in ranges:
                for slot in range(r.lo, r.hi + 1):
                    self.nodes_manager.slots_cache[slot] = listed
            self.keys.setdefault(master, {})
            self.infos[master] = {
                "run_id": f"run-{master}", "role": "master", "used_memory": 10,
                "maxmemory": 100, "connected_clients": 2, "maxmemory_policy": "allkeys-lru",
                "db0": {"keys": len(list(ranges))},
            }  # fmt: skip

    async def initialize(self) -> None:
        return None

    def owner(self, key: str) -> str:
        return self.nodes_manager.slots_cache[key_slot(key)][0].name

    async def info(self, *section: str, target_nodes: FakeNode) -> dict[str, Any]:
        await asyncio.sleep(self.delays.get(target_nodes.name, 0))
        reply = self.infos[target_nodes.name]
        if isinstance(reply, Exception):
            raise reply
        return dict(reply)

    async def execute_command(self, *args: Any, target_nodes: FakeNode) -> Any:
        await self.info(target_nodes=target_nodes)  # a node down fails every command
        command, key = args[0], args[1]
        assert command == "EXPIRE"
        assert self.owner(key) == target_nodes.name, "the marker must live on its master"
        return int(key in self.keys[target_nodes.name])

    async def set(self, key: str, value: Any, ex: Any = None) -> None:
        self.keys[self.owner(key)][key] = value

    async def config_get(self, name: str, target_nodes: FakeNode) -> dict[str, str]:
        return {name: self.policies.get(target_nodes.name, "?")}


async def test_cluster_masters_refreshes_the_map_and_falls_back_to_the_one_it_has() -> None:
    fake = FakeCluster(("n:1", [S], ("n:4",)), ("n:2", [A, V], ()))
    masters = await cluster_masters(fake)  # type: ignore[arg-type]
    assert [(m.name, m.slots.slots, m.node.name) for m in masters] == [
        ("n:1", (S,), "n:1"),
        ("n:2", (R(5461, 16383),), "n:2"),  # adjacent ranges are one
    ]
    assert [n.name for n in masters[0].replica_nodes] == ["n:4"]
    assert fake.refreshes == 1
    fake.refresh_error = ConnectionError("no seed answers")
    assert len(await cluster_masters(fake)) == 2  # type: ignore[arg-type]
    fake.nodes_manager.slots_cache = {}
    with pytest.raises(Exception, match="no slot map"):
        await cluster_masters(fake)  # type: ignore[arg-type]


# --- the filter a rebuild of one master uses -------------------------------------------
def test_a_key_filter_keeps_only_its_keys_live_and_expired() -> None:
    ops: list[RedisOp] = [
        StringWrite("a", "1", 0),
        Delete("b"),
        StringWrite("c", "1", 0),
        Delete("d"),
    ]
    chunk = _split("ai", list(ops), keep=lambda key: key in {"a", "b"})
    assert (chunk.ops, chunk.expired) == ([ops[0]], 1)
    assert _split("ai", list(ops)).expired == 2


# --- the marker and the rebuild per master ----------------------------------------------
URL = "redis+cluster://n:1"


def _targets(fake: FakeCluster) -> RedisTargets:
    target = parse_target(URL)
    return RedisTargets(
        dict.fromkeys(KEY_FAMILIES, target),
        dict.fromkeys(KEY_FAMILIES, fake),  # type: ignore[arg-type]
        dict.fromkeys(KEY_FAMILIES),
        dict.fromkeys(KEY_FAMILIES, "design"),
    )


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The replays the watch starts (not run: their arguments recorded)."""
    calls: list[dict[str, Any]] = []

    async def fake_replay(*args: Any, **kwargs: Any) -> ReplaySummary:
        calls.append(kwargs)
        return ReplaySummary()

    monkeypatch.setattr(rebuild, "replay", fake_replay)
    monkeypatch.setattr(rebuild, "RedisCluster", FakeCluster)
    return calls


async def _no_announce(state: str, keys: float) -> None:
    return None


def _design() -> FakeCluster:
    return FakeCluster(("n:1", [S], ("n:4",)), ("n:2", [A], ("n:5",)), ("n:3", [V], ("n:6",)))


@pytest.mark.parametrize(
    ("marked", "rebuilt"),
    [
        ({"n:1", "n:2", "n:3"}, []),
        ({"n:1", "n:3"}, ["n:2"]),  # the AI master lost its data
        ({"n:1"}, ["n:2", "n:3"]),  # two masters: one rebuild of both, for their slots
        (set(), ["n:1", "n:2", "n:3"]),
    ],
)
async def test_each_master_has_its_marker_and_only_masters_without_are_rebuilt(
    replays: list[dict[str, Any]], marked: set[str], rebuilt: list[str]
) -> None:
    fake = _design()
    masters = {m.name: m for m in await cluster_masters(fake)}  # type: ignore[arg-type]
    for name in marked:
        fake.keys[name][marker_key(masters[name])] = b"{}"
    watch = RedisWatch(None, _targets(fake), Settings(), _no_announce)  # type: ignore[arg-type]
    assert await watch.check() is bool(rebuilt)
    if watch.task is not None:
        await watch.task
    assert sorted(name for _, name in watch.tasks) == rebuilt
    for name in rebuilt:  # the marker is back, on that master, tagged into its range
        key = own_key(LOADED_MARKER_KEY, masters[name].slots.slots[0])
        assert key in fake.keys[name]
    if not rebuilt:
        assert replays == []
        return
    (call,) = replays
    assert call["kinds"] == ["stats", "sessions", "users", "ai", "voice", "metrics"]
    keep = call["keep"]
    keys = {
        "n:1": session_key("550e8400-e29b-41d4-a716-446655440000"),
        "n:2": ai_response_key_for_hash("125aeadf27b0459b8760c13a3d80912d"),
        "n:3": voice_key_for_hash(6, "65b426ed729984f0146591dcae6c1edc"),
    }
    for name, key in keys.items():  # only keys stored on a lost master are written
        assert keep(key) is (name in rebuilt), (name, layout_key(key, "design"))
    assert await watch.check() is False  # markers back: nothing more to do


async def test_a_master_down_is_reported_after_the_others_are_checked(
    replays: list[dict[str, Any]],
) -> None:
    fake = _design()
    fake.infos["n:1"] = ConnectionError("Error 111 connecting to n:1")
    watch = RedisWatch(None, _targets(fake), Settings(), _no_announce)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await watch.check()
    assert watch.task is not None
    await watch.task
    assert sorted(name for _, name in watch.tasks) == ["n:2", "n:3"]
    assert len(replays) == 1


async def test_a_master_being_rebuilt_is_not_checked_again(
    replays: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _design()
    release = asyncio.Event()

    async def slow_replay(*args: Any, **kwargs: Any) -> ReplaySummary:
        replays.append(kwargs)
        await release.wait()
        return ReplaySummary()

    monkeypatch.setattr(rebuild, "replay", slow_replay)
    masters = {m.name: m for m in await cluster_masters(fake)}  # type: ignore[arg-type]
    fake.keys["n:1"][marker_key(masters["n:1"])] = b"{}"
    fake.keys["n:3"][marker_key(masters["n:3"])] = b"{}"
    watch = RedisWatch(None, _targets(fake), Settings(), _no_announce)  # type: ignore[arg-type]
    assert await watch.check() is True
    await asyncio.sleep(0)
    assert await watch.check() is False  # n:2's rebuild still runs
    assert len(replays) == 1
    release.set()
    assert watch.task is not None
    await watch.task
    assert watch.rebuilds == 1
