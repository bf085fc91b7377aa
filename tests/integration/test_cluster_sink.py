"""The Redis sink on a real Redis Cluster (`rpcache stack up --redis cluster`).

Every kind of op lands, in both layouts, on the master that owns its stored
key's slot (`redis-py`'s own cluster client reads it back); with the design
layout every family's keys sit in its range of SPEC §8. A slot moved to
another master behind the writer's back (a live reshard) is followed (MOVED),
and a slot in the middle of a migration is written through ASK + ASKING; in
both cases nothing is lost and the slot is put back where the design wants it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import RedisCluster

from schemas.keys import (
    DESIGN_SLOT_RANGES,
    ClusterLayout,
    ai_response_key,
    layout_key,
    metrics_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key,
)
from schemas.slots import key_slot
from streams.projections import Delete, HashWrite, RedisOp, SortedSetAdd, StringWrite
from streams.redis_targets import RedisTargets, key_family
from streams.settings import Settings, get_settings
from streams.sinks.redis import write_by_target
from streams.tools.stack.cluster import ClusterTopology, cluster_lock, cluster_url
from streams.tools.stack.common import StackError
from tests import needs
from tests.integration.cluster_admin import (
    admin,
    finish_migration,
    masters,
    move_slots,
    owner,
    start_migration,
)

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel")  # its own servers: any run's topology will do
HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def stack_answers() -> None:
    """Overrides tests/integration/conftest.py's: this module needs redis-server only."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterTopology]:
    if shutil.which("redis-server") is None:
        needs.missing("redis-server is not installed: bash scripts/install-system-deps.sh")
    topology = ClusterTopology(get_settings())
    with cluster_lock(topology.home):  # it moves slots: not under a cluster test session
        was_running = topology.running()
        try:
            topology.up()
        except StackError as exc:
            pytest.fail(f"the cluster does not start: {exc}")
        yield topology
        if not was_running:
            topology.down()


def _settings(layout: ClusterLayout) -> Settings:
    url = SecretStr(cluster_url())
    return get_settings().model_copy(
        update={
            "redis_sessions_url": url,
            "redis_ai_url": url,
            "redis_voice_url": url,
            "redis_cluster_layout": layout,
        }
    )


@pytest.fixture(params=["hash", "design"])
async def targets(cluster: ClusterTopology, request: Any) -> AsyncIterator[RedisTargets]:
    t = RedisTargets.from_settings(_settings(request.param), decode_responses=True)
    yield t
    await t.aclose()


def _ops(run: str, n: int) -> list[RedisOp]:
    """n ops of every kind, on keys of every family, unique to this run."""
    expire = int((datetime.now(UTC) + timedelta(minutes=10)).timestamp() * 1000)
    ops: list[RedisOp] = []
    for i in range(n):
        ops += [
            HashWrite(session_key(f"{run}-{i}"), {"status": "active", "i": str(i)}, expire),
            HashWrite(user_state_key(f"{run}-u{i}"), {"current_session_id": str(i)}, expire),
            StringWrite(ai_response_key(f"{run} prompt {i}"), f'{{"i":{i}}}', expire),
            StringWrite(voice_key(i % 7, f"{run} text {i}"), f"audio-{i}", expire),
        ]
    ops.append(SortedSetAdd(metrics_key("response_time", "1m"), {f"{run}:1": 1.0}, 0.0, 60_000))
    ops.append(HashWrite(stats_key(datetime.now(UTC).date()), {run: "1"}, expire))
    return ops


async def _value(client: RedisCluster, key: str) -> Any:
    kind = await client.type(key)
    if kind == "hash":
        return await client.hgetall(key)
    if kind == "string":
        return await client.get(key)
    if kind == "zset":
        return await client.zrange(key, 0, -1)
    return None


async def _assert_landed(targets: RedisTargets, ops: list[RedisOp]) -> None:
    cluster = targets.masters["sessions"]
    assert isinstance(cluster, RedisCluster)
    layout = targets.layouts["sessions"]
    for op in ops:
        stored = targets.key(op.key)
        assert stored == layout_key(op.key, layout)
        value = await _value(cluster, stored)
        if isinstance(op, HashWrite):
            assert value is not None and op.fields.items() <= value.items(), op.key
        elif isinstance(op, StringWrite):
            assert value == op.value, op.key
        elif isinstance(op, SortedSetAdd):
            assert set(op.members) <= set(value or []), op.key
        assert await cluster.pttl(stored) > 0, op.key
        if layout == "design":  # SPEC §8: a family's keys stay in its range
            assert DESIGN_SLOT_RANGES[key_family(op.key)].holds(key_slot(stored)), stored


async def test_every_op_lands_on_its_master(targets: RedisTargets) -> None:
    run = uuid.uuid4().hex[:8]
    ops = _ops(run, 100)
    await write_by_target(targets, ops)
    assert len(ops) == 4 * 100 + 2  # left as given on success
    await _assert_landed(targets, ops)
    deletes: list[RedisOp] = [Delete(op.key) for op in ops[:40]]
    await write_by_target(targets, deletes)
    cluster = targets.masters["sessions"]
    assert isinstance(cluster, RedisCluster)
    assert [await cluster.exists(targets.key(op.key)) for op in ops[:40]] == [0] * 40


# --- resharding under the writer -------------------------------------------------------
def _design_key_in(family: str, run: str) -> tuple[RedisOp, int]:
    """A session op whose design-layout key's slot is known."""
    expire = int((datetime.now(UTC) + timedelta(minutes=10)).timestamp() * 1000)
    op = HashWrite(session_key(f"{run}-moved"), {"status": "active"}, expire)
    return op, key_slot(layout_key(op.key, "design"))


async def test_a_slot_moved_behind_the_writer_is_followed(cluster: ClusterTopology) -> None:
    t = RedisTargets.from_settings(_settings("design"), decode_responses=True)
    run = uuid.uuid4().hex[:8]
    op, slot = _design_key_in("sessions", run)
    home = owner(slot)
    away = next(p for p in masters() if p != home)
    try:
        await write_by_target(t, [op])  # the writer learns today's slot map
        move_slots([slot], home, away)  # MOVED from now on for its stale map
        ops: list[RedisOp] = [op, *_ops(run, 20)]
        await write_by_target(t, ops)
        assert len(ops) == 1 + 4 * 20 + 2
        await _assert_landed(t, ops)
        assert admin(away).exists(layout_key(op.key, "design")) == 1
    finally:
        if owner(slot) != home:
            move_slots([slot], away, home)
        await t.aclose()
    assert owner(slot) == home


async def test_a_slot_being_migrated_is_written_through_ask(cluster: ClusterTopology) -> None:
    t = RedisTargets.from_settings(_settings("design"), decode_responses=True)
    run = uuid.uuid4().hex[:8]
    op, slot = _design_key_in("sessions", run)
    home = owner(slot)
    away = next(p for p in masters() if p != home)
    src, dst = admin(home), admin(away)
    try:
        await write_by_target(t, [Delete(op.key)])  # learn the map; the key is absent
        start_migration(slot, home, away)
        ops: list[RedisOp] = [op]
        await write_by_target(t, ops)  # absent on the source: ASK → the importing node
        on_dst = dst.pipeline(transaction=False)  # one connection: ASKING, then the read
        on_dst.execute_command("ASKING")
        on_dst.hgetall(layout_key(op.key, "design"))
        assert on_dst.execute()[1] == {"status": "active"}  # it went where ASK said
    finally:
        finish_migration(slot, home, away)  # then bring the slot home
        move_slots([slot], away, home)
        await t.aclose()
    assert owner(slot) == home
    assert src.hgetall(layout_key(op.key, "design")) == {"status": "active"}
