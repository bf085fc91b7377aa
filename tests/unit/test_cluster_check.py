"""`rpcache check` on a Redis Cluster target (streams/observe/check.py, SPEC §8): the pure
judgement of its masters' slots, policies and replicas, in both layouts; and the
lines read from a fake cluster client."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.keys import DESIGN_SLOT_RANGES, ClusterLayout, KeyFamily
from schemas.slots import SlotRange
from streams.cluster_masters import cluster_masters
from streams.observe.check import CheckResult, MasterView, ReplicaView, judge_cluster, master_view
from tests.unit.test_cluster_masters import FakeCluster

R = SlotRange
S, A, V = DESIGN_SLOT_RANGES["sessions"], DESIGN_SLOT_RANGES["ai"], DESIGN_SLOT_RANGES["voice"]
ALL: tuple[KeyFamily, ...] = ("sessions", "ai", "voice")
SYNCED = (ReplicaView("r:1", "online"),)


def master(name: str, slots: tuple[SlotRange, ...], policy: str | None, **kw: Any) -> MasterView:
    return MasterView(name, slots, policy, kw.pop("replicas", SYNCED), **kw)


DESIGN = [
    master("m:1", (S,), "noeviction"),
    master("m:2", (A,), "allkeys-lru"),
    master("m:3", (V,), "allkeys-lfu"),
]
MOVED = [  # slots 5461-5470 of the AI range resharded to the voice master
    master("m:1", (S,), "noeviction"),
    master("m:2", (R(5471, 10922),), "allkeys-lru"),
    master("m:3", (R(5461, 5470), V), "allkeys-lfu"),
]


def _status(r: CheckResult) -> str:
    return "FAIL" if not r.ok else "warn" if r.warn else "ok"


@pytest.mark.parametrize(
    ("families", "layout", "masters", "expected"),
    [
        (ALL, "design", DESIGN, [("redis@m:1", "ok"), ("redis@m:2", "ok"), ("redis@m:3", "ok")]),
        (  # a reshard moved AI slots to the voice master: that master's line fails
            ALL,
            "design",
            MOVED,
            [
                ("redis@m:1", "ok"),
                ("redis@m:2", "ok"),
                ("redis@m:3", "FAIL", "slots 5461-5470 of the ai range (5461-10922)"),
            ],
        ),
        (  # the AI range served with LFU
            ALL,
            "design",
            [DESIGN[0], master("m:2", (A,), "allkeys-lfu"), DESIGN[2]],
            [("redis@m:1", "ok"), ("redis@m:2", "FAIL", "does not fit ai"), ("redis@m:3", "ok")],
        ),
        (  # sessions with allkeys-*: evicted before their TTL
            ALL,
            "design",
            [master("m:1", (S,), "allkeys-lru"), *DESIGN[1:]],
            [("redis@m:1", "FAIL", "does not fit sessions"), ("redis@m:2", "ok"), ("redis@m:3", "ok")],
        ),
        (  # an AI-only target: the other ranges hold none of its keys, their policy is moot
            ("ai",),
            "design",
            [master("m:1", (S,), "allkeys-lfu"), DESIGN[1], master("m:3", (V,), "allkeys-lru")],
            [("redis@m:1", "ok"), ("redis@m:2", "ok"), ("redis@m:3", "ok")],
        ),
        (  # ... but AI slots moved onto another family's master still fail
            ("ai",),
            "design",
            MOVED,
            [("redis@m:1", "ok"), ("redis@m:2", "ok"), ("redis@m:3", "FAIL", "slots 5461-5470")],
        ),
        (  # a master that does not answer
            ALL,
            "design",
            [*DESIGN[:2], master("m:3", (V,), None, error="ConnectionError: refused")],
            [("redis@m:1", "ok"), ("redis@m:2", "ok"), ("redis@m:3", "FAIL", "does not answer")],
        ),
        (  # slots served by no master
            ALL,
            "design",
            [DESIGN[0], master("m:2", (R(5461, 10900),), "allkeys-lru"), DESIGN[2]],
            [
                ("redis@m:1", "ok"),
                ("redis@m:2", "ok"),
                ("redis@m:3", "ok"),
                ("redis:slots", "FAIL", "slots 10901-10922 of the ai range are served by no master"),
            ],
        ),
        (  # replicas: none, not synced, another policy: warnings only
            ALL,
            "design",
            [
                master("m:1", (S,), "noeviction", replicas=()),
                master("m:2", (A,), "allkeys-lru", replicas=(ReplicaView("r:2", "wait_bgsave"),)),
                master("m:3", (V,), "allkeys-lfu", replicas=(ReplicaView("r:3", "online", 0, "allkeys-lru"),)),
            ],
            [
                ("redis@m:1", "warn", "no replica"),
                ("redis@m:2", "warn", "r:2 is not synced (wait_bgsave)"),
                ("redis@m:3", "warn", "replica r:3 has maxmemory-policy allkeys-lru"),
            ],
        ),
        (  # the hash layout: every master holds every family; a policy misfit warns
            ALL,
            "hash",
            MOVED,
            [("redis@m:1", "ok"), ("redis@m:2", "warn", "does not fit sessions"), ("redis@m:3", "warn")],
        ),
        (  # the hash layout needs all 16384 slots
            ("ai", "voice"),
            "hash",
            [master("m:2", (R(1, 10922),), "allkeys-lru"), DESIGN[2]],
            [("redis@m:2", "warn", "does not fit voice"), ("redis@m:3", "warn", "does not fit ai"), ("redis:slots", "FAIL", "slots 0 are served by no master")],
        ),
    ],
)  # fmt: skip
def test_judge_cluster(
    families: tuple[KeyFamily, ...],
    layout: ClusterLayout,
    masters: list[MasterView],
    expected: list[tuple[str, ...]],
) -> None:
    got = judge_cluster("redis", families, layout, masters)
    assert [(r.name, _status(r)) for r in got] == [e[:2] for e in expected]
    for result, (_, _, *words) in zip(got, expected, strict=True):
        for word in words:
            assert word in result.detail, result.detail


def test_the_moved_slots_line_says_what_to_do() -> None:
    line = judge_cluster("redis", ALL, "design", MOVED)[2].line()
    assert line.startswith("FAIL  redis@m:3  slots 5461-5470,10923-16383 (voice range)")
    assert "a reshard moved 10 slots of ai keys to a master of another family" in line


async def test_master_view_reads_each_node_alone() -> None:
    fake = FakeCluster(("m:1", [S], ("r:1", "r:9")), ("m:2", [A], ()))
    fake.infos["m:1"] |= {
        "maxmemory_policy": "noeviction",
        "redis_version": "7.0.15",
        "master_repl_offset": 500,
        "slave0": {"ip": "r", "port": 1, "state": "online", "offset": 400},
    }
    fake.infos["m:2"] = ConnectionError("Error 111")
    fake.policies["r:1"] = "allkeys-lru"
    one, two = [await master_view(fake, m) for m in await cluster_masters(fake)]  # type: ignore[arg-type]
    assert one == MasterView(
        "m:1",
        (S,),
        "noeviction",
        (
            ReplicaView("r:1", "online", 100, "allkeys-lru"),
            ReplicaView("r:9", "disconnected", 0, "?"),
        ),
        version="7.0.15",
    )
    assert (two.policy, two.error) == (None, "ConnectionError: Error 111")
