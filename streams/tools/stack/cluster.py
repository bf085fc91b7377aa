"""The local Redis Cluster in the design's slot layout: three masters, three replicas
(`rpcache stack up --redis cluster`).

Why this shape (SPEC §8, the original design's "Redis cluster design"): a
family that outgrows one node runs on a Redis Cluster, and the design gives
each family a third of the slots, served by a master with the family's
eviction policy:

| slots | family | master / replica | maxmemory-policy |
|---|---|---|---|
| 0–5460 | sessions | 6401 / 6404 | noeviction |
| 5461–10922 | ai | 6402 / 6405 | allkeys-lru |
| 10923–16383 | voice | 6403 / 6406 | allkeys-lfu |

With `REDIS_CLUSTER_LAYOUT=design` every key of a family carries a hash tag
of its range (`schemas.keys.layout_key`), so it lands on that master.

Every node is Debian's `redis-server` on 127.0.0.1 (cluster bus on port +
10000), memory only (`save ""`, no AOF) like the other local Redis servers,
`maxmemory 256mb`, `repl-diskless-sync-delay 0` (the first sync of a replica
does not wait 5 s), and:

- `cluster-node-timeout 2000`: a master that stops answering is suspected
  after 2 s, declared failed once the other masters agree (gossip), and its
  replica elected after a further 0.5–1 s: measured 4.4 s from a SIGKILL to
  the promoted replica serving the range, so a failover test sees it within
  seconds (with the default, 15 000 ms, it takes over 15 s). 1000 ms would
  fail over faster, but on the 2-core CI machine shared with Kafka, PostgreSQL
  and the tests, a node starved of CPU for a second (a fork, a busy
  neighbour) would be taken for dead and failed over for nothing.
- `cluster-require-full-coverage no`: a shard without a master refuses only
  its own slots; with `yes`, every node refuses every command until the
  slots are covered again (issue 14 measured every family stalling ~1 s for
  one dead master).

The cluster is formed with redis-py, not `redis-cli --cluster create`: the
same commands (`CLUSTER ADDSLOTSRANGE`, `SET-CONFIG-EPOCH`, `MEET`,
`REPLICATE`), but with a fixed pairing (6404 replicates 6401, …), so each
node's config file carries its shard's policy from the start, and each
step is skipped when already done, so an interrupted `up` is finished by the
next. `up` returns once every node says `cluster_state:ok`, every node sees
the same master for each range, every replica has synced and every node has
its shard's policy (set again with `CONFIG SET`, so a node that came back as
another shard's replica gets the right one). `down` stops the nodes and
deletes their `nodes-*.conf`, so the next `up` forms a fresh cluster.

Ports are fixed (a local stack): the URL `rpcache stack env` prints names them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from schemas.keys import DESIGN_SLOT_RANGES, KEY_FAMILIES, KeyFamily
from schemas.slots import CLUSTER_SLOTS, SlotRange
from streams.settings import Settings
from streams.tools.stack.common import (
    Address,
    StackError,
    file_lock,
    port_open,
    require_binary,
    stack_root,
)
from streams.tools.stack.redis_nodes import HOST as HOST  # noqa: PLC0414 (tests import it here)
from streams.tools.stack.redis_nodes import INSTALL_HINT, MAXMEMORY, POLICIES, LocalRedisNodes

MASTER_PORTS: Final = (6401, 6402, 6403)
"""The masters, in the order of the design's ranges (sessions, ai, voice)."""
REPLICA_PORTS: Final = (6404, 6405, 6406)
"""Replica i replicates master i."""
BUS_OFFSET: Final = 10000
"""The cluster bus of a node listens on its port + 10000 (Redis's default)."""
NODE_TIMEOUT_MS: Final = 2000
"""`cluster-node-timeout` (module docstring: why 2000)."""


@dataclass(frozen=True, slots=True)
class Node:
    """One redis-server of the cluster as designed (roles may swap after a failover)."""

    name: str
    port: int
    family: KeyFamily
    replica_of: int | None = None

    @property
    def bus_port(self) -> int:
        return self.port + BUS_OFFSET

    @property
    def slots(self) -> SlotRange:
        """The range of its shard (SPEC §8)."""
        return DESIGN_SLOT_RANGES[self.family]


def cluster_nodes() -> list[Node]:
    """The three masters, then the three replicas, in port order."""
    masters = [
        Node(f"{family}-master", port, family)
        for family, port in zip(KEY_FAMILIES, MASTER_PORTS, strict=True)
    ]
    replicas = [
        Node(f"{m.family}-replica", port, m.family, replica_of=m.port)
        for m, port in zip(masters, REPLICA_PORTS, strict=True)
    ]
    return [*masters, *replicas]


def cluster_url() -> str:
    """The `redis+cluster://` URL of this cluster, every node a seed (streams/redis_targets.py)."""
    return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in cluster_nodes())


def cluster_lock(home: Path, timeout_s: float = 240) -> contextlib.AbstractContextManager[None]:
    """Held by whoever empties the local cluster's masters (FLUSHALL) or moves its
    slots: a test session on it, a cluster test module, `rpcache bench`. Two at
    once would wipe each other's keys. `home`: `ClusterTopology.home`. Waits up
    to `timeout_s` for another holder, then raises TimeoutError."""
    return file_lock(home / ".tests.lock", timeout_s, "a test session or a bench on the cluster")


def cluster_env() -> dict[str, str]:
    """The settings that point every family at this cluster, in the design layout."""
    url = cluster_url()
    return {
        "REDIS_SESSIONS_URL": url,
        "REDIS_AI_URL": url,
        "REDIS_VOICE_URL": url,
        "REDIS_CLUSTER_LAYOUT": "design",
    }


# --- CLUSTER NODES ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeView:
    """One line of `CLUSTER NODES` (Redis Cluster specification, "CLUSTER NODES")."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    """The master a replica follows; None for a master."""
    connected: bool
    slots: tuple[SlotRange, ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """The nodes of a `CLUSTER NODES` reply:
    `<id> <ip:port@cport[,hostname]> <flags> <master|-> <ping> <pong> <epoch> <link> <slot>…`,
    a slot being `n` or `lo-hi`; migration entries (`[n->-id]`, `[n-<-id]`) are skipped.
    Raises ValueError for a line of fewer than 8 fields.
    """
    views: list[NodeView] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 8:
            raise ValueError(f"not a CLUSTER NODES line: {line!r}")
        address = fields[1].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        slots: list[SlotRange] = []
        for entry in fields[8:]:
            if entry.startswith("["):
                continue
            lo, _, hi = entry.partition("-")
            slots.append(SlotRange(int(lo), int(hi or lo)))
        views.append(
            NodeView(
                node_id=fields[0],
                host=host,
                port=int(port or 0),
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                connected=fields[7] == "connected",
                slots=tuple(slots),
            )
        )
    return views


@dataclass(frozen=True, slots=True)
class Shard:
    """A design range as the cluster serves it now."""

    family: KeyFamily
    slots: SlotRange
    master: int | None
    """The port of the one master serving exactly `slots`; None when no such master."""
    replicas: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node for `rpcache stack status`."""

    name: str
    port: int
    pid: int | None
    role: str
    """`master`, `replica of <port>`, or `down`."""
    slots: str
    policy: str


@contextlib.contextmanager
def _client(port: int, timeout: float = 2.0) -> Iterator[redis.Redis]:
    client = redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    try:
        yield client
    finally:
        client.close()


def _command(port: int, *args: str | int) -> object:
    """One command to one node; raises redis.RedisError / OSError when it fails."""
    with _client(port) as client:
        reply: object = client.execute_command(*args)  # type: ignore[no-untyped-call]
        return reply


def _nodes_of(port: int) -> list[NodeView]:
    return parse_cluster_nodes(str(_command(port, "CLUSTER", "NODES")))


def _info(port: int, *section: str) -> dict[str, object]:
    with _client(port) as client:
        info: dict[str, object] = client.info(*section)
        return info


def _cluster_info(port: int) -> dict[str, str]:
    text = str(_command(port, "CLUSTER", "INFO"))
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _slots_without_replica(port: int) -> str:
    """The slot ranges whose entry in `port`'s CLUSTER SLOTS has no replica ("" when
    every range has one). A freshly formed cluster lists a replica in CLUSTER NODES
    before it does here (seen in a clean-clone CI run), and redis-py's cluster
    client, like most, learns the replicas from CLUSTER SLOTS."""
    entries = _command(port, "CLUSTER", "SLOTS")
    assert isinstance(entries, list)
    return ",".join(f"{e[0]}-{e[1]}" for e in entries if len(e) < 4)


def _policy(port: int) -> str:
    with _client(port) as client:
        found = client.config_get("maxmemory-policy")
    return str(found.get("maxmemory-policy", "?"))


def shards_of(view: list[NodeView]) -> list[Shard]:
    """Each design range with the port of the master serving exactly it, and its replicas."""
    shards: list[Shard] = []
    for family in KEY_FAMILIES:
        slots = DESIGN_SLOT_RANGES[family]
        owner = next((v for v in view if v.is_master and v.slots == (slots,)), None)
        replicas = (
            tuple(sorted(v.port for v in view if v.master_id == owner.node_id and not v.failing))
            if owner
            else ()
        )
        shards.append(Shard(family, slots, owner.port if owner else None, replicas))
    return shards


class ClusterTopology:
    """Start, stop, inspect and break the cluster (tests kill masters with it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = stack_root(settings) / "redis-cluster"
        self.servers = LocalRedisNodes(self.home)

    # --- files ----------------------------------------------------------------------
    def _nodes_file(self, node: Node) -> Path:
        """Where the node keeps its view of the cluster (rewritten by Redis itself)."""
        return self.home / f"nodes-{node.port}.conf"

    def pid(self, node: Node) -> int | None:
        """The node's pid while it runs, started by this stack; else None."""
        return self.servers.pid(node)

    def config(self, node: Node) -> str:
        """redis.conf of one node (module docstring)."""
        lines = [
            *self.servers.data_lines(node, node.family, "cluster"),
            "cluster-enabled yes",
            f"cluster-config-file {self._nodes_file(node).name}",
            f"cluster-port {node.bus_port}",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            "cluster-require-full-coverage no",
        ]
        return "\n".join(lines) + "\n"

    # --- up / down -------------------------------------------------------------------
    def up(self, timeout: float = 60.0) -> list[str]:
        """Start what is not running, form the cluster unless formed, set the policies,
        and wait until healthy; notes of what was done (none when it was all there)."""
        binary = require_binary("redis-server", INSTALL_HINT)
        self.home.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        notes: list[str] = []
        with file_lock(self.home / ".lock"):
            nodes = cluster_nodes()
            if all(self.pid(n) is None for n in nodes):
                for node in nodes:  # none of ours runs: a fresh cluster, not a stale view
                    self._nodes_file(node).unlink(missing_ok=True)
            for node in nodes:
                if self.pid(node) is not None:
                    continue
                for port in (node.port, node.bus_port):
                    if port_open(Address(HOST, port)):
                        raise StackError(
                            f"redis cluster: port {port} is taken by a process this stack did "
                            "not start; stop it to run the local cluster"
                        )
                self._spawn(binary, node)
                notes.append(f"started {node.name} on {HOST}:{node.port}")
            self._wait(deadline, "every node answers", self._silent_node)
            notes += self._form(deadline)
            self._wait(deadline, "the cluster is formed", self._unformed)
            notes += self.apply_policies()
            self.wait_healthy(max(1.0, deadline - time.monotonic()))
        return notes

    def _spawn(self, binary: str, node: Node) -> None:
        # Empty, with its config written again (LocalRedisNodes.start: why no RDB file).
        self.servers.start(binary, node, self.config(node))

    def _wait(self, deadline: float, what: str, problem: Callable[[], str | None]) -> None:
        found = problem()
        while found is not None:
            if time.monotonic() >= deadline:
                raise StackError(f"redis cluster: not {what} in time: {found}")
            time.sleep(0.1)
            found = problem()

    def _silent_node(self) -> str | None:
        for node in cluster_nodes():
            try:
                _command(node.port, "PING")
            except (redis.RedisError, OSError) as exc:
                return f"{node.name} ({HOST}:{node.port}) does not answer: {exc}"
        return None

    def _form(self, deadline: float) -> list[str]:
        """Assign each master its range, introduce the nodes, make the replicas replicate;
        each step only where not done yet (module docstring)."""
        notes: list[str] = []
        nodes = cluster_nodes()
        ids = {n.port: str(_command(n.port, "CLUSTER", "MYID")) for n in nodes}
        for epoch, node in enumerate(nodes[:3], start=1):
            me = next(v for v in _nodes_of(node.port) if "myself" in v.flags)
            info = _cluster_info(node.port)
            if not me.is_master or me.slots or info.get("cluster_slots_assigned") != "0":
                continue
            if info.get("cluster_known_nodes") == "1" and info.get("cluster_current_epoch") == "0":
                # As redis-cli does: distinct epochs, so no collision to resolve.
                with contextlib.suppress(redis.ResponseError):
                    _command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
            lo, hi = node.slots
            _command(node.port, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
            notes.append(f"{node.name} ({node.port}) serves slots {lo}-{hi}")
        first = nodes[0]
        known = {v.node_id for v in _nodes_of(first.port)}
        strangers = [n for n in nodes[1:] if ids[n.port] not in known]
        for node in strangers:
            _command(first.port, "CLUSTER", "MEET", HOST, node.port, node.bus_port)
        if strangers:
            notes.append(f"introduced {len(strangers)} node(s) to {first.name} (CLUSTER MEET)")
        self._wait(deadline, "every node knows every other", lambda: self._strangers(ids))
        for node in nodes[3:]:
            me = next(v for v in _nodes_of(node.port) if "myself" in v.flags)
            if not me.is_master or me.slots:
                continue  # already a replica, or a promoted one serving slots: leave it
            assert node.replica_of is not None
            _command(node.port, "CLUSTER", "REPLICATE", ids[node.replica_of])
            notes.append(f"{node.name} ({node.port}) replicates {node.replica_of}")
        return notes

    def _strangers(self, ids: dict[int, str]) -> str | None:
        for node in cluster_nodes():
            view = {v.node_id: v for v in _nodes_of(node.port)}
            missing = [p for p, i in ids.items() if i not in view or "handshake" in view[i].flags]
            if missing:
                return f"{node.port} does not know {', '.join(map(str, missing))} yet"
        return None

    def _unformed(self) -> str | None:
        for node in cluster_nodes():
            info = _cluster_info(node.port)
            if info.get("cluster_state") != "ok":
                return f"{node.port}: cluster_state {info.get('cluster_state')}"
            if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                return f"{node.port}: {info.get('cluster_slots_ok')} slots ok"
        return None

    def apply_policies(self) -> list[str]:
        """`CONFIG SET` each node's maxmemory and its shard's policy; notes of what changed."""
        notes: list[str] = []
        view = _nodes_of(MASTER_PORTS[0])
        for shard in shards_of(view):
            if shard.master is None:
                continue
            for port in (shard.master, *shard.replicas):
                policy = POLICIES[shard.family]
                if _policy(port) != policy:
                    notes.append(f"{port} ({shard.family} shard): maxmemory-policy {policy}")
                _command(port, "CONFIG", "SET", "maxmemory-policy", policy, "maxmemory", MAXMEMORY)
        return notes

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until `problem()` finds nothing; StackError with the last problem on timeout."""
        self._wait(time.monotonic() + timeout, "healthy", self.problem)

    def problem(self) -> str | None:
        """None when healthy; else the first thing that is not."""
        try:
            return self._problem()
        except (redis.RedisError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _problem(self) -> str | None:
        nodes = cluster_nodes()
        silent = self._silent_node()
        if silent is not None:
            return silent
        unformed = self._unformed()
        if unformed is not None:
            return unformed
        owners: dict[int, list[tuple[KeyFamily, int | None]]] = {}
        for node in nodes:
            info = _cluster_info(node.port)
            if info.get("cluster_known_nodes") != str(len(nodes)):
                return f"{node.port} knows {info.get('cluster_known_nodes')} nodes"
            owners[node.port] = [(s.family, s.master) for s in shards_of(_nodes_of(node.port))]
        if len({tuple(o) for o in owners.values()}) > 1:
            return f"the nodes disagree on the masters: {owners}"
        shards = shards_of(_nodes_of(nodes[0].port))
        for shard in shards:
            if shard.master is None:
                return f"no master serves exactly slots {shard.slots} ({shard.family})"
            if not shard.replicas:
                return f"the {shard.family} master {shard.master} has no replica"
            for replica in shard.replicas:
                repl = _info(replica, "replication")
                if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress"):
                    return f"replica {replica} of {shard.master} has not synced yet"
            online = [  # redis-py parses `slave0:ip=…,state=online,…` into a dict
                v
                for k, v in _info(shard.master, "replication").items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
            ]
            if len(online) < len(shard.replicas):
                return f"the {shard.family} master {shard.master} sees a replica not online"
            for port in (shard.master, *shard.replicas):
                if _policy(port) != POLICIES[shard.family]:
                    return f"{port} ({shard.family}) has maxmemory-policy {_policy(port)}"
        for node in nodes:  # clients learn the replicas from CLUSTER SLOTS, of any node
            lonely = _slots_without_replica(node.port)
            if lonely:
                return f"{node.port}'s CLUSTER SLOTS lists no replica yet for slots {lonely}"
        return None

    def shards(self) -> list[Shard]:
        """Each design range with its master and replicas now, as the first node that
        answers sees them; StackError when none answers."""
        for node in cluster_nodes():
            with contextlib.suppress(redis.RedisError, OSError):
                return shards_of(_nodes_of(node.port))
        raise StackError("redis cluster: no node answers")

    def rows(self) -> list[NodeRow]:
        """Every node as `rpcache stack status` shows it."""
        view: dict[int, NodeView] = {}
        for node in cluster_nodes():
            with contextlib.suppress(redis.RedisError, OSError):
                view = {v.port: v for v in _nodes_of(node.port)}
                break
        by_id = {v.node_id: v.port for v in view.values()}
        rows: list[NodeRow] = []
        for node in cluster_nodes():
            try:
                policy = _policy(node.port)
            except (redis.RedisError, OSError):
                rows.append(NodeRow(node.name, node.port, self.pid(node), "down", "", ""))
                continue
            seen = view.get(node.port)
            if seen is None or not seen.is_master:
                master = by_id.get(seen.master_id or "") if seen else None
                role = f"replica of {master}" if master else "replica"
            else:
                role = "master"
            slots = ",".join(str(s) for s in seen.slots) if seen else ""
            rows.append(NodeRow(node.name, node.port, self.pid(node), role, slots, policy))
        return rows

    def running(self) -> bool:
        """Every node of the cluster is ours and alive."""
        return all(self.pid(n) is not None for n in cluster_nodes())

    def any_running(self) -> bool:
        """Some node of the cluster is ours and alive."""
        return any(self.pid(n) is not None for n in cluster_nodes())

    def down(self) -> bool:
        """Stop every node this stack started and forget the cluster; False when none ran."""
        stopped = False
        with file_lock(self.home / ".lock"):
            for node in cluster_nodes():
                stopped |= self.servers.stop(node)
            if not self.any_running():
                for node in cluster_nodes():
                    self._nodes_file(node).unlink(missing_ok=True)
        return stopped

    # --- faults, for the chaos tests ---------------------------------------------------
    def node_at(self, port: int) -> Node:
        return next(n for n in cluster_nodes() if n.port == port)

    def kill(self, node: Node) -> None:
        """SIGKILL one node, as a crash."""
        self.servers.kill(node)

    def restart(self, node: Node) -> None:
        """Start a killed node again: empty (no persistence), it rejoins the cluster from
        its `nodes-<port>.conf`; a master failed over meanwhile comes back as a replica."""
        self._spawn(require_binary("redis-server", INSTALL_HINT), node)
