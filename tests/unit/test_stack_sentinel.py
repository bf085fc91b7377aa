"""The sentinel topology: configuration of the local stack and of docker-compose agree."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.redis_targets import KEY_FAMILIES, parse_target
from streams.settings import Settings
from streams.tools.stack.sentinel import (
    POLICIES,
    SentinelTopology,
    data_nodes,
    family_url,
    sentinel_env,
    sentinel_nodes,
)

ROOT = Path(__file__).parents[2]


def test_every_family_has_a_master_and_a_replica_with_its_policy(tmp_path: Path) -> None:
    topo = SentinelTopology(Settings(stack_dir=str(tmp_path)))
    for family in KEY_FAMILIES:
        master, replica = [n for n in data_nodes() if n.family == family]
        assert replica.replica_of == master.port
        for node in (master, replica):
            config = topo._data_config(node)
            assert f"maxmemory-policy {POLICIES[family]}" in config
            assert "repl-diskless-sync-delay 0" in config
            assert 'save ""' in config
        assert f"replicaof 127.0.0.1 {master.port}" in topo._data_config(replica)
    sentinel = topo._sentinel_config(sentinel_nodes()[0])
    for family in KEY_FAMILIES:
        assert f"sentinel monitor {family} 127.0.0.1 " in sentinel


def test_stack_env_urls_name_each_family_set() -> None:
    env = sentinel_env()
    for family, name in zip(
        KEY_FAMILIES, ("REDIS_SESSIONS_URL", "REDIS_AI_URL", "REDIS_VOICE_URL"), strict=True
    ):
        target = parse_target(env[name])
        assert (target.master_name, len(target.sentinels)) == (family, 3)
        assert env[name] == family_url(family)


def test_compose_profile_has_the_same_topology() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for family in KEY_FAMILIES:
        for role in ("master", "replica"):
            service = services[f"redis-{family}-{role}"]
            assert service["profiles"] == ["sentinel"]
            command = service["command"]
            assert command[command.index("--maxmemory-policy") + 1] == POLICIES[family]
    worker = services["worker-sentinel"]["environment"]
    for family, name in zip(
        KEY_FAMILIES, ("REDIS_SESSIONS_URL", "REDIS_AI_URL", "REDIS_VOICE_URL"), strict=True
    ):
        target = parse_target(worker[name])
        assert (target.master_name, len(target.sentinels)) == (family, 3)
