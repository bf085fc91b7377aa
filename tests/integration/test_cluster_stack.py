"""The local Redis Cluster of `rpcache stack up --redis cluster`, and the design layout on it.

`streams/tools/stack/cluster.py` runs three masters serving the design's slot
ranges with their family's eviction policy and a synced replica each. Here,
on the real cluster: the ranges, policies and replicas are those of SPEC §8;
`CLUSTER KEYSLOT` agrees with `schemas.slots.key_slot`; and a design-layout
key of every kind (`schemas.keys.layout_key`), written through the
`redis+cluster://` URL `rpcache stack env` prints, is stored on the master
that serves its family's range, as is rpcache's own key tagged for each
master (`own_key`).

Needs only Debian's redis-server (not Kafka or PostgreSQL). The cluster is
stopped at the end when this module started it, and left running otherwise.
"""

from __future__ import annotations

import random
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import MovedError

from schemas.keys import (
    DESIGN_SLOT_RANGES,
    KEY_FAMILIES,
    LOADED_MARKER_KEY,
    KeyFamily,
    ai_response_key,
    layout_key,
    metrics_key,
    own_key,
    scenario_context_key,
    session_key,
    stats_key,
    user_state_key,
    voice_key,
)
from schemas.slots import key_slot
from streams.redis_targets import cluster_client, key_family, parse_target
from streams.settings import Settings, get_settings
from streams.tools.stack.cluster import (
    MASTER_PORTS,
    NODE_TIMEOUT_MS,
    REPLICA_PORTS,
    ClusterTopology,
    cluster_env,
    cluster_lock,
    cluster_nodes,
)
from streams.tools.stack.common import StackError
from streams.tools.stack.sentinel import POLICIES
from tests import needs

pytestmark = pytest.mark.integration
REDIS_TOPOLOGIES = ("single", "sentinel")  # its own servers: any run's topology will do
HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def stack_answers() -> None:
    """Overrides tests/integration/conftest.py's: this module needs redis-server only."""


@dataclass
class Running:
    topology: ClusterTopology
    fresh: bool
    """Started by this module, so the roles are still those of the design (no failover)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Running]:
    if shutil.which("redis-server") is None:
        needs.missing("redis-server is not installed: bash scripts/install-system-deps.sh")
    topology = ClusterTopology(get_settings())
    with cluster_lock(topology.home):  # not while a cluster test session flushes it
        was_running = topology.running()
        try:
            topology.up()
        except StackError as exc:
            pytest.fail(f"the cluster does not start: {exc}")
        yield Running(topology, fresh=not was_running)
        if not was_running:
            topology.down()


def _node(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5)


def test_masters_serve_the_design_ranges_with_their_policies_and_a_synced_replica(
    cluster: Running,
) -> None:
    assert cluster.topology.problem() is None
    shards = cluster.topology.shards()
    assert [(s.family, s.slots) for s in shards] == [
        (f, DESIGN_SLOT_RANGES[f]) for f in KEY_FAMILIES
    ]
    if cluster.fresh:
        assert [(s.master, s.replicas) for s in shards] == [
            (m, (r,)) for m, r in zip(MASTER_PORTS, REPLICA_PORTS, strict=True)
        ]
    for shard in shards:
        assert shard.master is not None and len(shard.replicas) == 1
        for port in (shard.master, *shard.replicas):
            node = _node(port)
            try:
                config = node.config_get("*")
                assert config["maxmemory-policy"] == POLICIES[shard.family], port
                assert int(config["maxmemory"]) == 256 * 1024 * 1024
                assert config["cluster-require-full-coverage"] == "no"
                assert config["cluster-node-timeout"] == str(NODE_TIMEOUT_MS)
                assert config["repl-diskless-sync-delay"] == "0"
                info = node.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                assert "cluster_state:ok" in str(info)
            finally:
                node.close()
        (replica,) = shard.replicas
        node = _node(replica)
        try:
            repl = node.info("replication")
        finally:
            node.close()
        assert (repl["role"], repl["master_port"], repl["master_link_status"]) == (
            "slave",
            shard.master,
            "up",
        )


def _sample_keys() -> list[str]:
    rng = random.Random(14)
    alphabet = "ab{}:-_xyzé日本0123456789"
    keys = ["", "{", "}", "{}", "a{}b", "{{a}}", "こんにちは", "123456789"]
    keys += ["".join(rng.choices(alphabet, k=rng.randint(1, 24))) for _ in range(400)]
    keys += [layout_key(k, "design") for k, _ in _family_keys()]
    keys += [own_key(LOADED_MARKER_KEY, DESIGN_SLOT_RANGES[f]) for f in KEY_FAMILIES]
    return keys


def test_cluster_keyslot_agrees_with_key_slot(cluster: Running) -> None:
    keys = _sample_keys()
    node = _node(MASTER_PORTS[0])
    try:
        pipe = node.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("CLUSTER", "KEYSLOT", key)
        slots = pipe.execute()
    finally:
        node.close()
    assert [int(s) for s in slots] == [key_slot(k) for k in keys]


def _family_keys() -> list[tuple[str, KeyFamily]]:
    keys = [
        session_key(str(uuid.uuid4())),
        user_state_key(f"cluster-test-{uuid.uuid4().hex[:8]}"),
        scenario_context_key("cluster-test"),
        metrics_key("response_time", "1m"),
        stats_key(date(2026, 12, 4)),
        ai_response_key(f"prompt {uuid.uuid4()}"),
        voice_key(6, f"text {uuid.uuid4()}"),
    ]
    return [(key, key_family(key)) for key in keys]


async def test_design_keys_are_stored_on_the_master_of_their_family(cluster: Running) -> None:
    """Written through the URL `rpcache stack env` prints; read back from the owning master
    directly (a plain client, which a master not owning the slot answers with MOVED)."""
    shards = {s.family: s for s in cluster.topology.shards()}
    url = cluster_env()["REDIS_SESSIONS_URL"]
    client = cluster_client(parse_target(url), Settings(), decode_responses=True)
    written: list[tuple[str, KeyFamily]] = [
        (layout_key(key, "design"), family) for key, family in _family_keys()
    ]
    written += [(own_key(LOADED_MARKER_KEY, shards[f].slots), f) for f in KEY_FAMILIES]
    assert {f for _, f in written} == set(KEY_FAMILIES)
    try:
        for key, _ in written:
            await client.set(key, "cluster-test", ex=60)
        for key, family in written:
            owner = shards[family].master
            assert owner is not None
            assert DESIGN_SLOT_RANGES[family].holds(key_slot(key)), key
            master = Redis(host=HOST, port=owner, decode_responses=True)
            try:
                assert await master.get(key) == "cluster-test", (key, owner)
            finally:
                await master.aclose()
            for other in {s.master for s in shards.values()} - {owner}:
                elsewhere = Redis(host=HOST, port=other, decode_responses=True)
                try:
                    with pytest.raises(MovedError) as moved:
                        await elsewhere.get(key)
                    assert (moved.value.slot_id, moved.value.port) == (key_slot(key), owner)
                finally:
                    await elsewhere.aclose()
    finally:
        for key, _ in written:
            await client.delete(key)
        await client.aclose()


def test_every_node_is_ours_and_named_in_the_stack_env_url(cluster: Running) -> None:
    target = parse_target(cluster_env()["REDIS_AI_URL"])
    assert target.cluster_nodes == tuple((HOST, n.port) for n in cluster_nodes())
    assert cluster.topology.running()
    assert cluster.topology.up() == []  # a running healthy cluster is reused as it is
