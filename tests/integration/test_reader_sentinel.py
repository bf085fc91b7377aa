"""CacheReader on the design's master/replica topology: a target per family, replica
reads where safe, one circuit breaker per target (SPEC §8, issue 13 points 2 and 3).

`streams/tools/stack/sentinel.py` runs a master and a replica per key family
and three Sentinels. This run's PostgreSQL database holds what the shared
worker projected; the reader's targets are the topology's db 4 (test_sentinel
uses 3), empty at the start, filled by the reader's own read-throughs.

Which node served is checked on the servers, not only in `ReadResult.node`:
the reader's connections carry a client name of their own, and `CLIENT LIST`
on each node says which of them ran the read (`cmd`, the last command).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from schemas.keys import ai_response_key, session_key, user_state_key, voice_key
from streams.publisher import EventPublisher
from streams.read.reader import CacheReader, ReadResult
from streams.redis_targets import KEY_FAMILIES, KeyFamily, close_client, master_client, parse_target
from streams.settings import Settings, get_settings
from streams.tools.stack.sentinel import (
    HOST,
    SentinelTopology,
    data_nodes,
    family_url,
    sentinel_nodes,
)
from tests.integration.conftest import WorkerProcess, eventually

pytestmark = pytest.mark.integration
DB = 4
NAME = f"rpcache-reader-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def topology() -> Iterator[SentinelTopology]:
    topo = SentinelTopology(get_settings())
    topo.up()
    topo.wait_healthy(60)
    yield topo
    for node in [n for n in [*data_nodes(), *sentinel_nodes()] if topo.pid(n) is None]:
        topo.restart(node)  # a killed node comes back (as a replica) for the next test
    topo.wait_healthy(60)


@pytest.fixture(scope="module")
async def masters(topology: SentinelTopology) -> AsyncIterator[dict[KeyFamily, Redis]]:
    """Each family's current master (db 4), emptied before and after the module."""
    settings = get_settings()
    clients = {
        f: master_client(parse_target(family_url(f, DB)), settings, decode_responses=True)
        for f in KEY_FAMILIES
    }
    for client in clients.values():
        await client.flushdb()
    yield clients
    for client in clients.values():
        await client.flushdb()
        await close_client(client)


@dataclass(frozen=True)
class Entities:
    user: str
    sid: str
    prompt: str
    speaker: int
    text: str
    audio: str

    def keys(self) -> dict[KeyFamily, list[str]]:
        return {
            "sessions": [session_key(self.sid), user_state_key(self.user)],
            "ai": [ai_response_key(self.prompt)],
            "voice": [voice_key(self.speaker, self.text)],
        }


@pytest.fixture(scope="module")
async def entities(worker: WorkerProcess, publisher: EventPublisher, redis: Redis) -> Entities:
    """A user, an open session, a cached AI response and voice clip, in PostgreSQL."""
    user = f"u-{uuid.uuid4().hex[:8]}"
    at = datetime.now(UTC).replace(microsecond=0)
    await publisher.user_login(user, preferences={"lang": "ja"}, occurred_at=at)
    sid = await publisher.session_started(user, speaker_id=6, occurred_at=at)
    prompt = f"こんにちは {uuid.uuid4()}"
    await publisher.ai_response(
        user, sid, prompt=prompt, response="やあ", provider="groq", model="m", latency_ms=9,
        occurred_at=at,
    )  # fmt: skip
    text = f"konnichiwa {uuid.uuid4()}"
    audio = base64.b64encode(b"RIFF" + os.urandom(2000)).decode()
    await publisher.voice_synthesized(
        user, sid, speaker_id=6, text=text, audio_b64=audio, latency_ms=9, occurred_at=at
    )
    e = Entities(user, sid, prompt, 6, text, audio)
    every = [k for keys in e.keys().values() for k in keys]
    # The shared worker projects into REDIS_URL (db 15) after its PostgreSQL commit.
    await eventually(lambda: redis.exists(*every), lambda n: n == len(every))
    return e


def reader_settings(base: Settings, **update: Any) -> Settings:
    """This run's database; every family on the sentinel topology's db 4."""
    urls = {
        "redis_sessions_url": SecretStr(family_url("sessions", DB)),
        "redis_ai_url": SecretStr(family_url("ai", DB)),
        "redis_voice_url": SecretStr(family_url("voice", DB)),
    }
    return base.model_copy(update={**urls, "read_timeout_ms": 250, **update})


async def read_all(r: CacheReader, e: Entities) -> list[ReadResult[Any]]:
    return [
        await r.get_session(e.sid),
        await r.get_user_state(e.user),
        await r.get_ai_response(e.prompt),
        await r.get_voice(e.speaker, e.text),
    ]


def where(results: list[ReadResult[Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(x.source, x.target, x.node) for x in results]


def family_ports(topology: SentinelTopology, family: KeyFamily) -> tuple[int, int]:
    """(master, replica) ports of a family as the Sentinels see it now."""
    master = topology.master_address(family)
    assert master is not None
    ports = [n.port for n in data_nodes() if n.family == family]
    replica = next(p for p in ports if p != master[1])
    return master[1], replica


async def reader_commands(port: int) -> Counter[str]:
    """The last command of each of the reader's connections to the node at `port`."""
    client = Redis(host=HOST, port=port, decode_responses=True, socket_timeout=2)
    try:
        return Counter(c["cmd"] for c in await client.client_list() if c.get("name") == NAME)
    finally:
        await client.aclose()


async def seed(r: CacheReader, e: Entities, masters: dict[KeyFamily, Redis]) -> None:
    """Every key on its family's master (the reader's read-throughs) and its replica."""
    await read_all(r, e)
    for client in masters.values():
        assert await client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]


async def test_each_family_is_read_from_its_target_sessions_from_a_replica(
    settings: Settings,
    topology: SentinelTopology,
    masters: dict[KeyFamily, Redis],
    entities: Entities,
) -> None:
    e = entities
    for client in masters.values():
        await client.flushdb()
    async with CacheReader.from_settings(reader_settings(settings), client_name=NAME) as r:
        first = await read_all(r, e)
        assert where(first) == [
            ("postgres", "sessions", None),
            ("postgres", "sessions", None),
            ("postgres", "ai", None),
            ("postgres", "voice", None),
        ]
        # The read-throughs wrote each key to its own family's master only.
        for family, client in masters.items():
            for other, keys in e.keys().items():
                want = len(keys) if other == family else 0
                assert await client.exists(*keys) == want, (family, other)
            assert await client.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]

        again = await read_all(r, e)
        assert where(again) == [
            ("redis", "sessions", "replica"),
            ("redis", "sessions", "replica"),
            ("redis", "ai", "master"),
            ("redis", "voice", "master"),
        ]
        assert [x.value for x in again] == [x.value for x in first]
        assert again[3].value == e.audio
        s = r.stats
        assert (s.hits, s.replica_hits, s.read_throughs, s.fallbacks) == (4, 2, 4, 0)
        assert (s.redis_errors, s.breaker_opens, s.breaker_state) == (0, 0, "closed")

        # The servers agree: HGETALL ran on the sessions replica, GET on the cache
        # masters, and the reader never touched the AI and voice replicas.
        master, replica = family_ports(topology, "sessions")
        assert (await reader_commands(replica))["hgetall"] >= 1
        assert (await reader_commands(master))["hgetall"] == 0
        for family in ("ai", "voice"):
            master, replica = family_ports(topology, family)
            assert (await reader_commands(master))["get"] >= 1, family
            assert not await reader_commands(replica), family


async def test_a_dead_voice_master_sends_voice_reads_to_postgres_until_the_failover(
    settings: Settings,
    topology: SentinelTopology,
    masters: dict[KeyFamily, Redis],
    entities: Entities,
) -> None:
    """SIGKILL of the voice master: voice reads come from PostgreSQL until Sentinel has
    promoted its replica, then from Redis again; session and AI reads never fail and
    never leave Redis (their targets' breakers stay closed)."""
    e = entities
    cfg = reader_settings(settings, breaker_fail_max=3, breaker_reset_s=0.3)
    async with CacheReader.from_settings(cfg, client_name=NAME) as r:
        await seed(r, e, masters)
        assert [x.source for x in await read_all(r, e)] == ["redis"] * 4

        old_master, _ = family_ports(topology, "voice")
        topology.kill(topology.node_at(old_master))
        killed = time.monotonic()
        voice: list[tuple[float, str, str | None]] = []
        others: Counter[tuple[str, str, str | None]] = Counter()
        recovered_at: float | None = None
        while time.monotonic() - killed < 30:
            session, user, ai, clip = await read_all(r, e)  # none may raise
            for result in (session, user, ai):
                others[(result.target or "", result.source, result.node)] += 1
            assert clip.value == e.audio  # from wherever: always the right clip
            voice.append((time.monotonic() - killed, clip.source, clip.node))
            if clip.source == "redis" and any(s == "postgres" for _, s, _ in voice):
                recovered_at = recovered_at or time.monotonic() - killed
                if time.monotonic() - killed > recovered_at + 1:  # a second on the new master
                    break
            await asyncio.sleep(0.05)

        assert recovered_at is not None, f"voice never came back to Redis: {voice[-5:]}"
        # Session and user state from the sessions replica, AI from its master, all along.
        assert set(others) == {("sessions", "redis", "replica"), ("ai", "redis", "master")}
        sources = [s for _, s, _ in voice]
        first_pg = sources.index("postgres")
        assert set(sources[:first_pg]) <= {"redis"}  # the kill was not seen yet
        back = next(i for i in range(first_pg, len(sources)) if sources[i] == "redis")
        assert set(sources[first_pg:back]) == {"postgres"}
        assert all(s == "redis" and n == "master" for _, s, n in voice[back:])
        new_master, _ = family_ports(topology, "voice")
        assert new_master != old_master
        assert (await reader_commands(new_master))["get"] >= 1

        s = r.stats
        assert r.breaker_for("voice").opens >= 1
        assert r.breaker_for("sessions").opens == r.breaker_for("ai").opens == 0
        assert s.breakers["voice"] == s.breakers["sessions"] == s.breakers["ai"] == "closed"
        assert s.overloaded == 0
        print(
            f"voice master {old_master} killed: voice reads from PostgreSQL "
            f"{voice[first_pg][0]:.2f}-{voice[back - 1][0]:.2f} s after the kill, "
            f"from the new master {new_master} from {recovered_at:.2f} s; "
            f"{sum(others.values())} session/user/AI reads, all from Redis"
        )
