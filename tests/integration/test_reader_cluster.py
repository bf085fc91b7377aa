"""CacheReader on a real Redis Cluster (`rpcache stack up --redis cluster`), in both key
layouts: every family on the cluster, a circuit breaker per master (issue 14 point 5).

The cluster is the local one of streams/tools/stack/cluster.py (masters
6401-6403, replicas 6404-6406), started here when it does not run (and then
stopped at the end), and held for the module (`streams.tools.stack.cluster.cluster_lock`: a test session
on the cluster topology flushes every master, and this module pauses one).
This run's PostgreSQL database holds what the shared worker projected; the
reader reads the cluster, where its own read-throughs put the keys.

The ids are chosen so that even in the `hash` layout the user-state, AI and
voice keys are on three different masters (their own hash lands in the
sessions, AI and voice ranges), as the `design` layout puts them.

Which node served is checked on the servers too: the reader's connections
carry a client name of their own, and `CLIENT LIST` on each node says which
of them ran the read (`cmd`, the last command).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import redis
from pydantic import SecretStr

from schemas.hashing import H
from schemas.keys import (
    DESIGN_SLOT_RANGES,
    ClusterLayout,
    KeyFamily,
    ai_response_key,
    layout_key,
    session_key,
    user_state_key,
    voice_key,
)
from schemas.slots import key_slot
from streams.projections import Delete
from streams.publisher import EventPublisher
from streams.read import recompute
from streams.read.reader import CacheReader, ReadResult
from streams.redis_targets import key_family
from streams.settings import Settings, get_settings
from streams.tools.stack.cluster import (
    HOST,
    MASTER_PORTS,
    ClusterTopology,
    cluster_lock,
    cluster_url,
)
from streams.tools.stack.common import StackError
from tests import needs
from tests.integration.conftest import WorkerProcess, eventually

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel")  # its own cluster: any run's topology will do
NAME = f"rpcache-reader-cluster-test-{uuid.uuid4().hex[:8]}"
T = "sessions+ai+voice"
"""The target's name: one cluster URL for every family."""
PAUSE_MS = 1200
"""How long the AI master is paused: well under cluster-node-timeout (2000 ms), so no
failover happens."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    if shutil.which("redis-server") is None:
        needs.missing("redis-server is not installed: bash scripts/install-system-deps.sh")
    topology = ClusterTopology(get_settings())
    with cluster_lock(topology.home):
        was_running = topology.running()
        try:
            topology.up()
        except StackError as exc:
            pytest.fail(f"the cluster does not start: {exc}")
        yield topology
        if not was_running:
            topology.down()


# --- the servers, asked directly ---------------------------------------------------------
def admin(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=10)


@dataclass(frozen=True)
class Shard:
    master: int
    replicas: tuple[int, ...]

    @property
    def address(self) -> str:
        return f"{HOST}:{self.master}"


def shard_of(slot: int) -> Shard:
    """The master serving `slot` now, and its replicas (CLUSTER SLOTS)."""
    for lo, hi, master, *replicas in admin(MASTER_PORTS[0]).execute_command("CLUSTER SLOTS"):
        if lo <= slot <= hi:
            return Shard(int(master[1]), tuple(int(r[1]) for r in replicas))
    raise AssertionError(f"slot {slot} is not served")


def masters() -> list[int]:
    """Every master's port, from CLUSTER SLOTS."""
    view = admin(MASTER_PORTS[0]).execute_command("CLUSTER SLOTS")
    return sorted({int(master[1]) for _, _, master, *_ in view})


def reader_commands(port: int) -> Counter[str]:
    """The last command of each of the reader's connections to the node at `port`."""
    return Counter(c["cmd"] for c in admin(port).client_list() if c.get("name") == NAME)


def on_replica(port: int, key: str) -> bool:
    """Whether the replica at `port` holds `key` (READONLY: a replica of a cluster
    answers MOVED otherwise)."""
    with admin(port) as client:
        pipe = client.pipeline(transaction=False)  # one connection: READONLY, then EXISTS
        pipe.execute_command("READONLY")
        pipe.exists(key)
        return bool(pipe.execute()[1])


def restore(shard: Shard, slot: int, timeout_s: float = 30) -> None:
    """Wait until `shard`'s master answers again (a pause ends by itself), and should
    the cluster have failed it over meanwhile (`slot`, one of its slots, served by
    another node), make it the master again (CLUSTER FAILOVER on it, now a
    replica): the shared cluster is left as it was."""
    deadline = time.monotonic() + timeout_s
    admin(shard.master).ping()  # waits out the pause (socket timeout 10 s)
    while time.monotonic() < deadline:
        if shard_of(slot).master == shard.master:
            return
        if admin(shard.master).info("replication")["role"] == "slave":
            admin(shard.master).execute_command("CLUSTER FAILOVER")
        time.sleep(0.5)
    raise AssertionError(f"{shard.address} is not the master of its slots again")


# --- what the worker projected -------------------------------------------------------------
def landing_in(family: KeyFamily, make: Callable[[str], str]) -> str:
    """A fresh id whose key's own hash (the `hash` layout's slot) is in `family`'s range
    of the design layout."""
    while True:
        ident = uuid.uuid4().hex[:8]
        if DESIGN_SLOT_RANGES[family].holds(key_slot(make(ident))):
            return ident


@dataclass(frozen=True)
class Entities:
    user: str
    sid: str
    prompt: str
    speaker: int
    text: str
    audio: str

    def spec_keys(self) -> list[str]:
        """The SPEC §4 keys of the four reads of `read_all`, in its order."""
        return [
            session_key(self.sid),
            user_state_key(self.user),
            ai_response_key(self.prompt),
            voice_key(self.speaker, self.text),
        ]


async def in_postgres(pool: asyncpg.Pool, settings: Settings, e: Entities) -> bool:
    """Whether PostgreSQL has every entry the reads recompute (the worker committed)."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        ops = [
            await recompute.session_op(conn, e.sid, now),
            await recompute.user_op(conn, settings, e.user, now),
            await recompute.ai_response_op(conn, H(e.prompt), now),
            await recompute.voice_op(conn, e.speaker, H(e.text), now),
        ]
    return not any(isinstance(op, Delete) for op in ops)


@pytest.fixture(scope="module")
async def entities(
    worker: WorkerProcess, publisher: EventPublisher, pool: asyncpg.Pool, settings: Settings
) -> Entities:
    """A user, an open session, a cached AI response and voice clip, in PostgreSQL."""
    user = "u-" + landing_in("sessions", lambda x: user_state_key(f"u-{x}"))
    prompt = "こんにちは " + landing_in("ai", lambda x: ai_response_key(f"こんにちは {x}"))
    text = "konnichiwa " + landing_in("voice", lambda x: voice_key(6, f"konnichiwa {x}"))
    at = datetime.now(UTC).replace(microsecond=0)
    await publisher.user_login(user, preferences={"lang": "ja"}, occurred_at=at)
    sid = await publisher.session_started(user, speaker_id=6, occurred_at=at)
    await publisher.ai_response(
        user, sid, prompt=prompt, response="やあ", provider="groq", model="m", latency_ms=9,
        occurred_at=at,
    )  # fmt: skip
    audio = base64.b64encode(b"RIFF" + os.urandom(2000)).decode()
    await publisher.voice_synthesized(
        user, sid, speaker_id=6, text=text, audio_b64=audio, latency_ms=9, occurred_at=at
    )
    e = Entities(user, sid, prompt, 6, text, audio)
    await eventually(lambda: in_postgres(pool, settings, e), bool)
    return e


# --- the reader --------------------------------------------------------------------------
def reader_settings(base: Settings, layout: ClusterLayout, **update: Any) -> Settings:
    """This run's database; every family on the local cluster, in `layout`."""
    url = SecretStr(cluster_url())
    return base.model_copy(
        update={
            "redis_sessions_url": url,
            "redis_ai_url": url,
            "redis_voice_url": url,
            "redis_replica_url": None,
            "redis_cluster_layout": layout,
            "read_timeout_ms": 250,
            **update,
        }
    )


async def read_all(r: CacheReader, e: Entities) -> list[ReadResult[Any]]:
    return [
        await r.get_session(e.sid),
        await r.get_user_state(e.user),
        await r.get_ai_response(e.prompt),
        await r.get_voice(e.speaker, e.text),
    ]


def where(results: list[ReadResult[Any]]) -> list[tuple[str, str | None, str | None, str | None]]:
    return [(x.source, x.target, x.node, x.shard) for x in results]


def stored_shards(e: Entities, layout: ClusterLayout) -> list[tuple[str, Shard]]:
    """Each read's stored key and the shard serving its slot now."""
    stored = [layout_key(k, layout) for k in e.spec_keys()]
    return [(s, shard_of(key_slot(s))) for s in stored]


def delete_stored(e: Entities, layout: ClusterLayout) -> None:
    for stored, shard in stored_shards(e, layout):
        admin(shard.master).delete(stored)


async def replicated(e: Entities, layout: ClusterLayout) -> None:
    """Until every key is on a replica of its master (the reads that follow use them)."""
    for stored, shard in stored_shards(e, layout):
        await eventually(
            lambda s=stored, sh=shard: asyncio.to_thread(on_replica, sh.replicas[0], s), bool
        )


@pytest.mark.parametrize("layout", ["hash", "design"])
async def test_each_kind_is_read_from_its_shard_sessions_from_a_replica(
    settings: Settings, cluster: ClusterTopology, entities: Entities, layout: ClusterLayout
) -> None:
    e = entities
    delete_stored(e, layout)
    shards = stored_shards(e, layout)
    async with CacheReader.from_settings(reader_settings(settings, layout), client_name=NAME) as r:
        first = await read_all(r, e)
        assert where(first) == [("postgres", T, None, None)] * 4

        # The read-throughs wrote each key back, at its stored key, on its slot's master.
        for key, (stored, shard) in zip(e.spec_keys(), shards, strict=True):
            assert admin(shard.master).exists(stored) == 1, key
            assert admin(shard.master).pttl(stored) > 0, key
            assert admin(shard.master).execute_command("CLUSTER KEYSLOT", stored) == key_slot(
                stored
            )
            if layout == "design":
                assert stored != key
                assert DESIGN_SLOT_RANGES[key_family(key)].holds(key_slot(stored)), stored
            else:
                assert stored == key
        assert len({shard.master for _, shard in shards[1:]}) == 3  # user, ai, voice
        await replicated(e, layout)

        again = await read_all(r, e)
        addresses = [shard.address for _, shard in shards]
        assert where(again) == [
            ("redis", T, "replica", addresses[0]),  # state: a replica is safe
            ("redis", T, "replica", addresses[1]),
            ("redis", T, "master", addresses[2]),  # LRU / LFU: the master sees every read
            ("redis", T, "master", addresses[3]),
        ]
        assert [x.value for x in again] == [x.value for x in first]
        assert again[3].value == e.audio
        s = r.stats
        assert (s.hits, s.replica_hits, s.read_throughs, s.write_backs, s.fallbacks) == (
            4, 2, 4, 4, 0,
        )  # fmt: skip
        assert (s.redis_errors, s.breaker_opens, s.breaker_state) == (0, 0, "closed")
        want = {T: "closed"}
        for port in masters():
            want |= {f"{T}@{HOST}:{port}": "closed", f"{T}@{HOST}:{port}/replica": "closed"}
        assert s.breakers == want

        # The servers agree: HGETALL ran on the replicas of the session and user keys'
        # masters, never on those masters; GET on the cache keys' masters, on no replica.
        for _, shard in shards[:2]:
            assert reader_commands(shard.replicas[0])["hgetall"] >= 1
            assert reader_commands(shard.master)["hgetall"] == 0
        for _, shard in shards[2:]:
            assert reader_commands(shard.master)["get"] >= 1
            assert reader_commands(shard.replicas[0])["get"] == 0

        # A key deleted behind the reader: read through, written back to its slot's master.
        voice_stored, voice_shard = shards[3]
        admin(voice_shard.master).delete(voice_stored)
        through = await r.get_voice(e.speaker, e.text)
        assert (through.source, through.value) == ("postgres", e.audio)
        assert admin(voice_shard.master).exists(voice_stored) == 1
        assert admin(voice_shard.master).pttl(voice_stored) > 0


@pytest.mark.parametrize("layout", ["hash", "design"])
async def test_a_paused_master_sends_its_shards_reads_to_postgres_the_others_stay(
    settings: Settings, cluster: ClusterTopology, entities: Entities, layout: ClusterLayout
) -> None:
    """`CLIENT PAUSE … ALL` on the AI key's master for 1.2 s (no failover): AI reads come
    from PostgreSQL until it answers again, then from it; session and user-state reads
    (replicas) and voice reads (another master) never fail and never leave Redis, and
    no breaker but the paused master's opens."""
    e = entities
    cfg = reader_settings(settings, layout, breaker_fail_max=2, breaker_reset_s=0.3)
    shards = stored_shards(e, layout)
    paused = shards[2][1]
    others = [f"{T}@{HOST}:{port}" for port in masters() if port != paused.master]
    async with CacheReader.from_settings(cfg, client_name=NAME) as r:
        await read_all(r, e)  # every key in Redis (read-throughs, if any were absent)
        await replicated(e, layout)
        assert [x.source for x in await read_all(r, e)] == ["redis"] * 4

        ai: list[tuple[float, str, str | None]] = []
        rest: Counter[tuple[str, str | None, str | None]] = Counter()
        opened: set[str] = set()
        admin(paused.master).execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                session, user, answer, clip = await read_all(r, e)  # none may raise
                for result in (session, user, clip):
                    rest[(result.source, result.node, result.shard)] += 1
                assert answer.value is not None and answer.value["response"] == "やあ"
                ai.append((time.monotonic() - started, answer.source, answer.shard))
                opened |= {name for name, state in r.stats.breakers.items() if state != "closed"}
                back = [t for t, source, _ in ai if source == "redis"]
                if back and back[-1] > PAUSE_MS / 1000 + 0.5:  # half a second on Redis again
                    break
                await asyncio.sleep(0.02)
        finally:
            await asyncio.to_thread(restore, paused, key_slot(shards[2][0]))

        sources = [source for _, source, _ in ai]
        assert "postgres" in sources, ai
        first_pg = sources.index("postgres")
        assert ai[first_pg][0] < PAUSE_MS / 1000
        back_at = next(i for i in range(first_pg, len(ai)) if sources[i] == "redis")
        assert set(sources[first_pg:back_at]) == {"postgres"}
        assert all(s == "redis" and shard == paused.address for _, s, shard in ai[back_at:])
        # Session and user state from their replicas, voice from its master, all along.
        assert {(s, node) for s, node, _ in rest} <= {("redis", "replica"), ("redis", "master")}
        assert rest[("redis", "master", shards[3][1].address)] == len(ai)
        assert sum(n for (_, node, _), n in rest.items() if node == "replica") == 2 * len(ai)
        assert opened <= {f"{T}@{paused.address}"}, opened  # no other breaker, ever
        assert f"{T}@{paused.address}" in opened
        s = r.stats
        assert s.breakers[T] == "closed" and all(s.breakers[o] == "closed" for o in others)
        assert s.overloaded == 0
        print(
            f"[{layout}] AI master {paused.address} paused {PAUSE_MS} ms: AI reads from "
            f"PostgreSQL {ai[first_pg][0]:.2f}-{ai[back_at - 1][0]:.2f} s after the pause, "
            f"from Redis again at {ai[back_at][0]:.2f} s; {sum(rest.values())} session, "
            f"user-state and voice reads meanwhile, all from Redis"
        )
    # No failover happened: the shared cluster is as it was.
    assert shard_of(key_slot(shards[2][0])).master == paused.master
    assert all(admin(p).execute_command("CLUSTER INFO")["cluster_state"] == "ok" for p in masters())
