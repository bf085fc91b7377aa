"""The local Redis Cluster: its configuration, the local stack and docker-compose agree
(streams/tools/stack/cluster.py; no server)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from schemas.keys import DESIGN_SLOT_RANGES, KEY_FAMILIES
from schemas.slots import SlotRange
from streams.redis_targets import parse_target
from streams.settings import Settings, get_settings
from streams.tools.stack import cli
from streams.tools.stack.cluster import (
    MASTER_PORTS,
    NODE_TIMEOUT_MS,
    REPLICA_PORTS,
    ClusterTopology,
    cluster_env,
    cluster_nodes,
    cluster_url,
    parse_cluster_nodes,
    shards_of,
)
from streams.tools.stack.sentinel import POLICIES

ROOT = Path(__file__).parents[2]


def test_three_masters_in_range_order_and_a_replica_each() -> None:
    nodes = cluster_nodes()
    assert [n.port for n in nodes] == [*MASTER_PORTS, *REPLICA_PORTS] == list(range(6401, 6407))
    masters, replicas = nodes[:3], nodes[3:]
    assert [m.family for m in masters] == list(KEY_FAMILIES)
    assert [m.slots for m in masters] == [DESIGN_SLOT_RANGES[f] for f in KEY_FAMILIES]
    assert [(r.family, r.replica_of) for r in replicas] == [(m.family, m.port) for m in masters]
    assert all(m.replica_of is None for m in masters)
    assert [n.bus_port for n in nodes] == list(range(16401, 16407))


def test_each_node_config(tmp_path: Path) -> None:
    topo = ClusterTopology(Settings(stack_dir=str(tmp_path)))
    for node in cluster_nodes():
        config = topo.config(node).splitlines()
        for line in (
            "bind 127.0.0.1",
            f"port {node.port}",
            "cluster-enabled yes",
            f"cluster-config-file nodes-{node.port}.conf",
            f"cluster-port {node.port + 10000}",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            "cluster-require-full-coverage no",
            "repl-diskless-sync-delay 0",
            'save ""',
            "appendonly no",
            "maxmemory 256mb",
            f"maxmemory-policy {POLICIES[node.family]}",
            "daemonize no",
        ):
            assert line in config, (node.name, line)
        assert f'dir "{tmp_path / "redis-cluster"}"' in config
    assert 1000 <= NODE_TIMEOUT_MS <= 2000


def test_stack_env_points_every_family_at_the_cluster_in_the_design_layout() -> None:
    env = cluster_env()
    assert env["REDIS_CLUSTER_LAYOUT"] == "design"
    for name in ("REDIS_SESSIONS_URL", "REDIS_AI_URL", "REDIS_VOICE_URL"):
        assert env[name] == cluster_url()
        target = parse_target(env[name])
        assert target.kind == "cluster"
        assert target.cluster_nodes == tuple(("127.0.0.1", p) for p in range(6401, 6407))
    settings = Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    assert settings.redis_cluster_layout == "design"


NODES_REPLY = """\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:6404@16404,host-4 slave \
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:6402@16402 master - 0 1426238316232 2 \
connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:6403@16403 master - 0 1426238318243 3 \
connected 10923-16383 [10923->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:6405@16405 slave \
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 127.0.0.1:6406@16406 slave,fail \
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 0 1426238317741 6 disconnected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:6401@16401 myself,master - 0 0 1 \
connected 0-5460
"""


def test_parse_cluster_nodes() -> None:
    views = {v.port: v for v in parse_cluster_nodes(NODES_REPLY)}
    assert sorted(views) == list(range(6401, 6407))
    me = views[6401]
    assert (me.is_master, me.slots, me.master_id, me.connected) == (
        True,
        (SlotRange(0, 5460),),
        None,
        True,
    )
    assert "myself" in me.flags
    assert views[6403].slots == (SlotRange(10923, 16383),)  # the migration entry is skipped
    assert views[6404].master_id == me.node_id and not views[6404].is_master
    assert views[6404].host == "127.0.0.1"
    assert views[6406].failing and not views[6406].connected


def test_single_slots_and_bad_lines() -> None:
    (view,) = parse_cluster_nodes("id 10.0.0.1:7000@17000 master - 0 0 1 connected 5 7-9\n")
    assert view.slots == (SlotRange(5, 5), SlotRange(7, 9))
    with pytest.raises(ValueError, match="CLUSTER NODES"):
        parse_cluster_nodes("too short\n")


def test_shards_of_a_view() -> None:
    shards = shards_of(parse_cluster_nodes(NODES_REPLY))
    assert [(s.family, s.slots, s.master, s.replicas) for s in shards] == [
        ("sessions", SlotRange(0, 5460), 6401, (6404,)),
        ("ai", SlotRange(5461, 10922), 6402, (6405,)),
        ("voice", SlotRange(10923, 16383), 6403, ()),  # its replica has failed
    ]
    resharded = NODES_REPLY.replace("connected 0-5460", "connected 0-5000 5002-5460")
    assert shards_of(parse_cluster_nodes(resharded))[0].master is None


def _compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(
        (ROOT / "docker-compose.yml").read_text()
    )["services"]
    return services


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_profile_runs_the_same_cluster() -> None:
    services = _compose()
    for i, node in enumerate(cluster_nodes(), start=1):
        service = services[f"redis-cluster-{i}"]
        assert service["profiles"] == ["cluster"]
        command = service["command"]
        assert isinstance(command, list)
        assert _option(command, "--maxmemory-policy") == POLICIES[node.family], node.name
        assert _option(command, "--cluster-enabled") == "yes"
        assert _option(command, "--cluster-node-timeout") == str(NODE_TIMEOUT_MS)
        assert _option(command, "--cluster-require-full-coverage") == "no"
        assert _option(command, "--repl-diskless-sync-delay") == "0"
        assert _option(command, "--maxmemory") == "256mb"
        assert (_option(command, "--save"), _option(command, "--appendonly")) == ("", "no")
        assert service["image"] == services["redis"]["image"]
    create = services["redis-cluster-create"]
    assert create["profiles"] == ["cluster"]
    script = create["command"]
    assert isinstance(script, list)
    ranges = re.findall(r"cli (\d) cluster addslotsrange (\d+) (\d+)", script[0])
    assert [(int(n), SlotRange(int(lo), int(hi))) for n, lo, hi in ranges] == [
        (i, DESIGN_SLOT_RANGES[f]) for i, f in enumerate(KEY_FAMILIES, start=1)
    ]
    assert 'cluster replicate "$$(cli "$$((n - 3))" cluster myid)"' in script[0]
    assert set(create["depends_on"]) == {f"redis-cluster-{i}" for i in range(1, 7)}  # type: ignore[arg-type]


# --- `rpcache stack env --redis …` ---------------------------------------------------------
@pytest.fixture
def stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("STACK_DIR", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STACK_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _running(monkeypatch: pytest.MonkeyPatch, sentinel: bool, cluster: bool) -> None:
    monkeypatch.setattr(cli.SentinelTopology, "running", lambda self: sentinel)
    monkeypatch.setattr(cli.ClusterTopology, "running", lambda self: cluster)


def _exports(output: str) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in output.splitlines())


@pytest.mark.parametrize(
    ("args", "sentinel", "cluster", "urls"),
    [
        ([], False, False, None),
        ([], False, True, "cluster"),
        ([], True, False, "sentinel"),
        (["--redis", "cluster"], True, True, "cluster"),
        (["--redis", "sentinel"], True, True, "sentinel"),
        (["--redis", "single"], True, True, None),
    ],
)
def test_stack_env_per_topology(
    stack_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    sentinel: bool,
    cluster: bool,
    urls: str | None,
) -> None:
    _running(monkeypatch, sentinel, cluster)
    result = CliRunner().invoke(cli.stack_app, ["env", *args])
    assert result.exit_code == 0, result.output
    env = _exports(result.stdout)
    assert env["REDIS_URL"] == "redis://localhost:6379/0"
    kinds = {parse_target(env[n]).kind for n in env if n.startswith("REDIS_") and "_URL" in n}
    if urls is None:
        assert "REDIS_SESSIONS_URL" not in env and "REDIS_CLUSTER_LAYOUT" not in env
    else:
        assert kinds == {"single", urls}
        assert ("REDIS_CLUSTER_LAYOUT" in env) is (urls == "cluster")


@pytest.mark.parametrize(
    ("args", "sentinel", "cluster", "needle"),
    [
        ([], True, True, "both the sentinel topology and the cluster run"),
        (["--redis", "cluster"], True, False, "stack up --redis cluster"),
        (["--redis", "sentinel"], False, True, "stack up --redis sentinel"),
    ],
)
def test_stack_env_refuses_what_does_not_run_or_is_ambiguous(
    stack_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    sentinel: bool,
    cluster: bool,
    needle: str,
) -> None:
    _running(monkeypatch, sentinel, cluster)
    result = CliRunner().invoke(cli.stack_app, ["env", *args])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert needle in result.stderr


def test_stack_up_knows_the_cluster_topology(stack_dir: Path) -> None:
    result = CliRunner().invoke(cli.stack_app, ["up", "--redis", "ring"])
    assert result.exit_code != 0
    assert "single, sentinel or cluster" in result.output
