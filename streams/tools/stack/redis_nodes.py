"""The redis-server nodes of a local multi-node topology: the Redis Cluster
(streams/tools/stack/cluster.py) and the master/replica set with its Sentinels
(streams/tools/stack/sentinel.py).

Why one piece for both: the two run the same kind of node the same way, and
must keep doing so. Each node is a `redis-server` on 127.0.0.1, started
detached and remembered by a pid file (streams/tools/stack/common.py), with
its config, pid file and log named after it in the topology's directory; and
each data node is memory only with the design's memory cap and its family's
eviction policy. Only what makes a topology itself stays in its module: the
`cluster-*` lines, `replicaof`, the Sentinel's `sentinel monitor` lines.

The single stack Redis (streams/tools/stack/redis_server.py) is not one of
these: it is a `Service` with TLS, a password and a 1 GB cap of its own.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Final, Protocol

from schemas.keys import KeyFamily
from streams.tools.stack.common import (
    pid_alive,
    process_matches,
    read_pid,
    send_signal,
    spawn_detached,
    terminate,
    wait_gone,
)

INSTALL_HINT = "bash scripts/install-system-deps.sh  (or: apt-get install redis-server)"
HOST: Final = "127.0.0.1"
"""Every node binds here only: a local stack, reachable from this machine alone."""
POLICIES: Final[dict[KeyFamily, str]] = {
    "sessions": "noeviction",
    "ai": "allkeys-lru",
    "voice": "allkeys-lfu",
}
"""Each family's eviction policy (the design's; `rpcache check` judges a target by it)."""
MAXMEMORY: Final = "256mb"
"""The memory cap of every data node (the design's)."""
STOP_GRACE_S: Final = 10.0
"""How long `stop` waits after SIGTERM before SIGKILL."""


class RedisNode(Protocol):
    """What `LocalRedisNodes` needs of a topology's node: the name its files carry
    and the port it listens on (cluster.Node and sentinel.Node both fit)."""

    @property
    def name(self) -> str: ...

    @property
    def port(self) -> int: ...


class LocalRedisNodes:
    """The files and processes of the redis-server nodes of one local topology,
    all under `home`: `<name>.conf`, `<name>.pid`, `<name>.log` (and `<name>.rdb`,
    which is deleted before each start: the nodes keep nothing on disk)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def conf_path(self, node: RedisNode) -> Path:
        return self.home / f"{node.name}.conf"

    def pid_path(self, node: RedisNode) -> Path:
        return self.home / f"{node.name}.pid"

    def log_path(self, node: RedisNode) -> Path:
        return self.home / f"{node.name}.log"

    def pid(self, node: RedisNode) -> int | None:
        """The pid of the node this stack started, while it runs; else None. A pid
        file left by a crash, or a pid reused by another process, gives None."""
        pid = read_pid(self.pid_path(node))
        # redis-server sets its process title to
        # "redis-server <bind>:<port>" (+ " [cluster]" or " [sentinel]")
        if pid is None or not pid_alive(pid) or not process_matches(pid, f"{HOST}:{node.port}"):
            return None
        return pid

    def start(self, binary: str, node: RedisNode, config: str | None, *options: str) -> int:
        """Start the node, detached; record its pid in its pid file and return it.

        `config` is written to its config file first; None starts it with the file
        as it is (a Sentinel rewrites its own with what it has learned). `options`
        follow the file on the command line (`--sentinel`).

        An RDB file left from an earlier run is deleted first: the nodes are memory
        only, and a full sync can leave one behind (a replica that did not load from
        the socket). Loading it would bring back data a crash loses, and make a
        cluster node claim the slots of its keys before the cluster is formed (seen:
        "I have keys for unassigned slot …", the AI range half lost).
        """
        (self.home / f"{node.name}.rdb").unlink(missing_ok=True)
        if config is not None:
            self.conf_path(node).write_text(config)
        argv = [binary, str(self.conf_path(node)), *options]
        pid = spawn_detached(argv, log=self.log_path(node), cwd=self.home)
        self.pid_path(node).write_text(f"{pid}\n")
        return pid

    def stop(self, node: RedisNode) -> bool:
        """SIGTERM the node if this stack started it and it runs (SIGKILL after
        `STOP_GRACE_S`); False when it did not run."""
        pid = self.pid(node)
        if pid is None:
            return False
        terminate(pid, STOP_GRACE_S)
        return True

    def kill(self, node: RedisNode) -> None:
        """SIGKILL the node, as a crash, and wait until it is gone (the chaos tests)."""
        pid = self.pid(node)
        if pid is not None:
            send_signal([pid], signal.SIGKILL)
            wait_gone([pid], 10)

    def server_lines(self, node: RedisNode, header: str) -> list[str]:
        """The redis.conf lines every node starts with, a Sentinel's too: `header`
        (a comment saying who generated the file), then where it listens, in the
        foreground (so its pid is the one recorded), logging to stdout (the log
        file `start` gives it), working in `home`."""
        return [
            header,
            f"bind {HOST}",
            f"port {node.port}",
            "daemonize no",
            'logfile ""',
            f'dir "{self.home}"',
        ]

    def data_lines(self, node: RedisNode, family: KeyFamily, topology: str) -> list[str]:
        """The redis.conf lines every data node of a topology shares; the topology
        appends its own. `topology` is the `--redis` value of `rpcache stack up`
        that starts it, named in the header.

        Memory only (`save ""`, no AOF), like the single stack Redis; the design's
        cap and the family's policy; `repl-diskless-sync-delay 0`, else the first
        sync of a replica waits 5 s (and a master killed before its replica synced
        is never failed over); a replica loads the sync from the socket
        (`repl-diskless-load on-empty-db`), so it writes no RDB file either.
        """
        header = f"# Generated by `rpcache stack up --redis {topology}`; edits are overwritten."
        return [
            *self.server_lines(node, header),
            f"dbfilename {node.name}.rdb",
            'save ""',
            "appendonly no",
            f"maxmemory {MAXMEMORY}",
            f"maxmemory-policy {POLICIES[family]}",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "repl-diskless-load on-empty-db",
            "replica-read-only yes",
        ]
