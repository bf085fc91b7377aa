"""docker-compose's `cluster` profile forms the design's cluster (issue 14, point 6).

No Docker engine runs on the CI machine, so the profile's two halves are
proven apart: tests/unit/test_stack_cluster.py checks that each node's
command carries the local stack's settings; here, six Debian `redis-server`s
started with exactly those commands on 127.0.0.1 are formed into a cluster
by the `redis-cluster-create` script itself, taken from docker-compose.yml
with only its three addressing lines (`host`, `port`, `ip`) replaced. The
cluster it forms must be the design's: node i serves the range of family i
with that family's policy, node i+3 replicates node i, every node says
`cluster_state:ok`; and the script run a second time changes nothing (it
is the one-shot `restart: "no"` service, but `up` runs it again).

Needs redis-server, redis-cli and sh (the Debian packages the set-up installs).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from schemas.keys import DESIGN_SLOT_RANGES, KEY_FAMILIES
from streams.tools.stack.cluster import parse_cluster_nodes
from streams.tools.stack.common import project_root
from streams.tools.stack.redis_nodes import HOST, POLICIES, LocalRedisNodes
from tests import needs

pytestmark = pytest.mark.integration

ADDRESSING = (
    'host() { echo "redis-cluster-$$1"; }\n'
    "port() { echo 6379; }\n"
    'ip() { getent hosts "$$(host "$$1")" | awk \'{ print $$1; exit }\'; }\n'
)


@dataclass(frozen=True, slots=True)
class ComposeNode:
    name: str
    port: int


def _compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(
        (project_root() / "docker-compose.yml").read_text()
    )["services"]
    return services


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _six_ports() -> list[int]:
    """Six ports whose cluster bus ports (+10000) are free too."""
    for _ in range(50):
        base = random.randrange(21000, 29000, 10)
        ports = [base + i for i in range(6)]
        if all(_free(p) and _free(p + 10000) for p in ports):
            return ports
    pytest.fail("no six free ports (and bus ports) found on 127.0.0.1")


def _script(ports: list[int]) -> str:
    """The create script as the container's `sh -euc` runs it (compose turns `$$`
    into `$`), addressed to the local nodes."""
    command = _compose()["redis-cluster-create"]["command"]
    assert isinstance(command, list)
    text = str(command[0])
    assert ADDRESSING in text, "the script's addressing lines changed; update this test"
    cases = " ".join(f"{i}) echo {p} ;;" for i, p in enumerate(ports, start=1))
    local = (
        f'host() {{ echo "{HOST}"; }}\n'
        f'port() {{ case "$$1" in {cases} esac; }}\n'
        f'ip() {{ echo "{HOST}"; }}\n'
    )
    return text.replace(ADDRESSING, local).replace("$$", "$")


@pytest.fixture
def compose_nodes(tmp_path: Path) -> Iterator[list[ComposeNode]]:
    """Six bare cluster nodes, each run with its docker-compose command (plus where
    to listen and keep its files), stopped at the end."""
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        needs.missing("redis-server and redis-cli are not installed: make setup")
    services = _compose()
    nodes = [ComposeNode(f"redis-cluster-{i}", p) for i, p in enumerate(_six_ports(), start=1)]
    started: list[tuple[LocalRedisNodes, ComposeNode]] = []
    try:
        for node in nodes:
            command = services[node.name]["command"]
            assert isinstance(command, list) and command[0] == "redis-server"
            servers = LocalRedisNodes(tmp_path / node.name)
            servers.home.mkdir()
            config = "\n".join(servers.server_lines(node, "# test_compose_cluster")) + "\n"
            servers.start(binary, node, config, *map(str, command[1:]))
            started.append((servers, node))
        for node in nodes:
            _wait(lambda n=node: _answers(n.port), f"{node.name} answers")
        yield nodes
    finally:
        for servers, node in started:
            servers.stop(node)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=2, decode_responses=True)


def _answers(port: int) -> bool:
    try:
        with _client(port) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _wait(ok: object, what: str, timeout: float = 20.0) -> None:
    assert callable(ok)
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"not in {timeout} s: {what}")
        time.sleep(0.1)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-euc", script], capture_output=True, text=True, timeout=120, check=False
    )


def _layout(ports: list[int]) -> list[tuple[int, str, tuple[tuple[int, int], ...], int | None]]:
    """(port, role, slots, port of its master) of each node, as node 1 sees them."""
    with _client(ports[0]) as client:
        view = parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))
    port_of = {v.node_id: v.port for v in view}
    return sorted(
        (
            v.port,
            "master" if v.is_master else "replica",
            tuple((r.lo, r.hi) for r in v.slots),
            port_of.get(v.master_id) if v.master_id else None,
        )
        for v in view
    )


def test_the_compose_script_forms_the_design_cluster(compose_nodes: list[ComposeNode]) -> None:
    ports = [n.port for n in compose_nodes]
    script = _script(ports)
    first = _run(script)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "redis cluster formed" in first.stdout

    ranges = [DESIGN_SLOT_RANGES[f] for f in KEY_FAMILIES]
    expected = sorted(
        [(p, "master", ((r.lo, r.hi),), None) for p, r in zip(ports[:3], ranges, strict=True)]
        + [(p, "replica", (), m) for p, m in zip(ports[3:], ports[:3], strict=True)]
    )
    # Node 1 learns the replicas by gossip, a moment after they replicate.
    _wait(lambda: _layout(ports) == expected, "node 1 sees the design's layout")
    for port, family in zip(ports, [*KEY_FAMILIES, *KEY_FAMILIES], strict=True):
        with _client(port) as client:
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == POLICIES[family]
            assert "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))

    again = _run(script)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _layout(ports) == expected
