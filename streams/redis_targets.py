"""Where each family of Redis keys lives: one Redis, a Sentinel-managed master/replica set,
or a Redis Cluster.

SPEC §8: every family of keys has a Redis target. `REDIS_URL` is the default
for all of them; `REDIS_SESSIONS_URL` (sessions, user state, metrics, stats
and rpcache's own keys), `REDIS_AI_URL` (`ai_response:`) and
`REDIS_VOICE_URL` (`voice:`) override it per family. Key names stay those of
SPEC §4 whatever the target.

A target URL is one of:

- `redis://[user:password@]host:port/db` or `rediss://…` (TLS): one Redis,
  as redis-py's `Redis.from_url` reads it;
- `redis+sentinel://[user:password@]host:port[,host:port…]/master_name[/db]`
  or `rediss+sentinel://…`: a master/replica set watched by Sentinels, in the
  form of the `redis-sentinel-url` convention (also used by several
  Redis-backed job queues). The listed addresses are Sentinels; the user and
  password are those of the master and replicas. Query options:
  `sentinel_password` (when the Sentinels require one; the Sentinels' user is
  `sentinel_username`). Writes always go to the master the Sentinels name
  now, so they follow a failover; reads may go to a replica
  (`replica_client`);
- `redis+cluster://[user:password@]host:port[,host:port…][/0]` or
  `rediss+cluster://…` (TLS): a Redis Cluster, given by one or more seed
  nodes (any node of the cluster; the client learns the others from `CLUSTER
  SLOTS`), in the comma-separated form of the Sentinel URL above. The user
  and password are those of every node. The path is empty or `/0`: a
  cluster has database 0 only. No query options. `cluster_client` builds
  redis-py's `RedisCluster` for it; the key layout on it is
  REDIS_CLUSTER_LAYOUT (`schemas.keys.layout_key`).

This module only parses and builds clients; it does no I/O until a client
is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

# The families are defined with the key rules (schemas.keys) and re-exported here.
from schemas.keys import KEY_FAMILIES as KEY_FAMILIES  # noqa: PLC0414
from schemas.keys import ClusterLayout, layout_key
from schemas.keys import KeyFamily as KeyFamily  # noqa: PLC0414
from streams.security import redis_options, redis_tls_options
from streams.settings import Settings

TargetKind = Literal["single", "sentinel", "cluster"]
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT: Final = 6379
_PREFIX_FAMILY: Final[tuple[tuple[str, KeyFamily], ...]] = (
    ("ai_response:", "ai"),
    ("voice:", "voice"),
)


REPLAY_KINDS: Final[dict[KeyFamily, tuple[str, ...]]] = {
    "sessions": ("stats", "sessions", "users", "metrics"),
    "ai": ("ai",),
    "voice": ("voice",),
}
"""The kinds of keys `rpcache replay` recomputes (streams/read/recompute.py), per family."""


def as_targets(redis: Redis | RedisTargets) -> RedisTargets:
    """`redis` itself when it is targets, else every family on that one client."""
    return redis if isinstance(redis, RedisTargets) else RedisTargets.single(redis)


def key_family(key: str) -> KeyFamily:
    """The family a key belongs to (SPEC §8): `ai_response:` → ai, `voice:` → voice,
    everything else (sessions, users, metrics, stats, rpcache's own) → sessions."""
    for prefix, family in _PREFIX_FAMILY:
        if key.startswith(prefix):
            return family
    return "sessions"


def target_label(families: Sequence[KeyFamily]) -> str:
    """A target's name in metrics and on the dashboard: the families it serves joined
    by `+`, in family order (`voice`, `sessions+ai+voice` when one Redis serves all),
    as `RedisTargets.distinct()` lists them and the reader names its breakers."""
    return "+".join(families)


def master_label(label: str, address: str) -> str:
    """One master of a cluster target: the target's name, `@`, the master's `host:port`
    (`sessions+ai+voice@127.0.0.1:6401`), as the Redis figures name its row and the
    reader its circuit breaker."""
    return f"{label}@{address}"


@dataclass(frozen=True, slots=True)
class Target:
    """One family's Redis, parsed from its URL (secrets included: never log it)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    """Sentinel addresses; empty for a single Redis."""
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    """Seed nodes of a Redis Cluster, in the URL's order; empty unless a cluster."""
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)

    @property
    def kind(self) -> TargetKind:
        """single (one Redis), sentinel or cluster."""
        return "cluster" if self.is_cluster else "sentinel" if self.is_sentinel else "single"

    def describe(self) -> str:
        """A name for logs and `rpcache check`, without any secret."""
        if self.is_cluster:
            return "cluster " + ",".join(f"{h}:{p}" for h, p in self.cluster_nodes)
        if self.is_sentinel:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.master_name}@{hosts}/{self.db}"
        parts = urlsplit(self.url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{self.db}"


def parse_target(url: str) -> Target:
    """Parse a target URL (module docstring); raises ValueError with what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        db = int(parts.path.strip("/") or 0) if scheme != "unix" else 0
        return Target(url=url, db=db, tls=scheme == "rediss")
    if scheme in CLUSTER_SCHEMES:
        return _parse_cluster(url)
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise ValueError(
            f"unknown Redis URL scheme {scheme!r}: use redis://, rediss://,"
            " redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for entry in filter(None, hosts.split(",")):
        host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "26379")
        sentinels.append((host or entry, int(port or 26379)))
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL needs at least one Sentinel host:port")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("a redis+sentinel:// URL needs the master name: …/mymaster[/db]")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return Target(
        url=url,
        sentinels=tuple(sentinels),
        master_name=path[0],
        db=int(path[1]) if len(path) > 1 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=scheme.startswith("rediss"),
        sentinel_username=query.get("sentinel_username"),
        sentinel_password=query.get("sentinel_password"),
    )


def _parse_cluster(url: str) -> Target:
    """A `redis+cluster://` / `rediss+cluster://` URL (module docstring)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    seeds: list[tuple[str, int]] = []
    for entry in filter(None, parts.netloc.rpartition("@")[2].split(",")):
        seeds.append(_host_port(entry, scheme))
    if not seeds:
        raise ValueError(f"a {scheme}:// URL needs at least one seed node host:port")
    db = parts.path.strip("/")
    if db not in ("", "0"):
        raise ValueError(
            f"a {scheme}:// URL names database {db!r}, but a Redis Cluster has database 0"
            " only: leave the path empty or use /0"
        )
    if parts.query:
        raise ValueError(f"a {scheme}:// URL takes no query options, got {parts.query!r}")
    return Target(
        url=url,
        cluster_nodes=tuple(seeds),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=scheme.startswith("rediss"),
    )


def _host_port(entry: str, scheme: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (port 6379 when absent)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad seed node {entry!r} in a {scheme}:// URL")
    else:
        host, _, port = entry.partition(":")
    if not host:
        raise ValueError(f"a seed node of a {scheme}:// URL has no host: {entry!r}")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port {port!r} of seed node {entry!r} in a {scheme}:// URL")
    return host, int(port)


def target_urls(settings: Settings) -> dict[KeyFamily, str]:
    """Each family's URL: its own setting, else REDIS_URL."""
    default = settings.redis_url.get_secret_value()
    own: dict[KeyFamily, SecretStr | None] = {
        "sessions": settings.redis_sessions_url,
        "ai": settings.redis_ai_url,
        "voice": settings.redis_voice_url,
    }
    return {f: (url.get_secret_value() if (url := own[f]) else default) for f in KEY_FAMILIES}


def _tls_options(settings: Settings, tls: bool) -> dict[str, Any]:
    return {"ssl": True, **redis_tls_options(settings)} if tls else {}


def _sentinel(target: Target, settings: Settings, **kwargs: Any) -> Sentinel:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": kwargs.get("socket_timeout", 2),
        "socket_connect_timeout": kwargs.get("socket_connect_timeout", 2),
    }
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.sentinel_username:
        sentinel_kwargs["username"] = target.sentinel_username
    sentinel_kwargs |= _tls_options(settings, target.tls)
    return Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8
        list(target.sentinels),
        sentinel_kwargs=sentinel_kwargs,
        username=target.username,
        password=target.password,
        db=target.db,
        **_tls_options(settings, target.tls),
        **kwargs,
    )


def master_client(target: Target, settings: Settings, **kwargs: Any) -> Redis:
    """A client whose every connection goes to the current master (writes).

    For a Sentinel target, a connection asks the Sentinels for the master when
    it opens, and a master demoted under it (READONLY) is reported as a
    connection error, so the caller's retry reconnects to the new master.

    Raises ValueError for a cluster target, which has many masters: use
    `cluster_client`.
    """
    if target.is_cluster:
        raise ValueError(
            f"{target.describe()} is a Redis Cluster: its client is cluster_client(), "
            "not a single master's"
        )
    if not target.is_sentinel:
        return Redis.from_url(target.url, **redis_options(settings, target.url), **kwargs)
    client: Redis = _sentinel(target, settings, **kwargs).master_for(target.master_name)
    return client


def replica_client(target: Target, settings: Settings, **kwargs: Any) -> Redis | None:
    """A client that reads from the replicas (round robin, the master when none
    answers), or None for a single Redis or a cluster (its client reaches its
    replicas itself: `cluster_client(…, read_from_replicas=True)`)."""
    if not target.is_sentinel:
        return None
    client: Redis = _sentinel(target, settings, **kwargs).slave_for(target.master_name)
    return client


def cluster_client(target: Target, settings: Settings, **kwargs: Any) -> RedisCluster:
    """redis-py's asyncio `RedisCluster` on the target's seed nodes, with its user,
    password and the TLS options of REDIS_SSL_* for `rediss+cluster://`.

    `kwargs` go to `RedisCluster` (timeouts, `decode_responses`,
    `read_from_replicas`, `require_full_coverage`…) and, through it, to every
    node's connections. No I/O here: the client reads the slot map (`CLUSTER
    SLOTS`) from the first seed that answers on its first command or
    `initialize()`. Raises ValueError for a target that is not a cluster.
    """
    if not target.is_cluster:
        raise ValueError(f"{target.describe()} is not a Redis Cluster (redis+cluster://)")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.cluster_nodes],
        username=target.username,
        password=target.password,
        **_tls_options(settings, target.tls),
        **kwargs,
    )


@lru_cache(maxsize=32_768)
def stored_key(key: str, layout: ClusterLayout) -> str:
    """`schemas.keys.layout_key`, remembered for the keys written most: the same
    session and user keys are written batch after batch, and a design-layout key
    costs a SHA-256 and a parse (measured: 3.3 us per session key; 0.09 us from
    this cache). At most ~32 000 keys, a few MB."""
    return layout_key(key, layout)


Client = Redis | RedisCluster
"""A family's write client: one master (single or Sentinel), or a whole cluster."""


@dataclass
class RedisTargets:
    """Every family's master client (and replica client, for Sentinel targets), and
    the key layout each family's keys take there.

    Families whose URLs are equal share one client, so the default (REDIS_URL
    for all) is one connection pool as before. A cluster target's client is
    redis-py's `RedisCluster` and its keys follow REDIS_CLUSTER_LAYOUT; every
    other target stores the SPEC §4 keys as they are.
    """

    targets: dict[KeyFamily, Target]
    masters: dict[KeyFamily, Client]
    replicas: dict[KeyFamily, Redis | None]
    layouts: dict[KeyFamily, ClusterLayout] = field(
        default_factory=lambda: dict.fromkeys(KEY_FAMILIES, "hash")
    )

    @classmethod
    def single(cls, client: Redis, url: str = "redis://localhost:6379/0") -> RedisTargets:
        """Every family on one client (callers that were given a plain Redis)."""
        target = parse_target(url)
        return cls(
            {f: target for f in KEY_FAMILIES},
            {f: client for f in KEY_FAMILIES},
            {f: None for f in KEY_FAMILIES},
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        cluster_options: Mapping[str, Any] | None = None,
        /,
        **kwargs: Any,
    ) -> RedisTargets:
        """Clients for every family; `kwargs` go to each client (timeouts, decoding),
        `cluster_options` to a cluster target's `RedisCluster` only (e.g.
        `require_full_coverage`, which a single node's client would refuse)."""
        by_url: dict[str, tuple[Target, Client, Redis | None]] = {}
        targets: dict[KeyFamily, Target] = {}
        masters: dict[KeyFamily, Client] = {}
        replicas: dict[KeyFamily, Redis | None] = {}
        layouts: dict[KeyFamily, ClusterLayout] = {}
        for family, url in target_urls(settings).items():
            if url not in by_url:
                target = parse_target(url)
                by_url[url] = (
                    (
                        target,
                        cluster_client(target, settings, **kwargs, **(cluster_options or {})),
                        None,
                    )
                    if target.is_cluster
                    else (
                        target,
                        master_client(target, settings, **kwargs),
                        replica_client(target, settings, **kwargs),
                    )
                )
            targets[family], masters[family], replicas[family] = by_url[url]
            layouts[family] = (
                settings.redis_cluster_layout if targets[family].is_cluster else "hash"
            )
        return cls(targets, masters, replicas, layouts)

    def master_for(self, key: str) -> Client:
        """The client that writes `key` (a SPEC §4 key): its family's."""
        return self.masters[key_family(key)]

    def key(self, key: str) -> str:
        """The key stored for the SPEC §4 key `key` on its family's target
        (`schemas.keys.layout_key`: itself unless a design-layout cluster)."""
        layout = self.layouts[key_family(key)]
        return key if layout == "hash" else stored_key(key, layout)

    @property
    def relayout(self) -> bool:
        """True when some family's stored keys differ from the SPEC §4 keys."""
        return any(layout != "hash" for layout in self.layouts.values())

    def distinct(self) -> list[tuple[tuple[KeyFamily, ...], Client]]:
        """Each distinct master client with the families it serves, in family order."""
        seen: dict[int, tuple[list[KeyFamily], Client]] = {}
        for family, client in self.masters.items():
            seen.setdefault(id(client), ([], client))[0].append(family)
        return [(tuple(families), client) for families, client in seen.values()]

    async def aclose(self) -> None:
        for _, client in self.distinct():
            await close_client(client)
        for replica in {id(r): r for r in self.replicas.values() if r is not None}.values():
            await close_client(replica)


async def close_client(client: Client) -> None:
    """Close a client, and for a Sentinel-managed one the Sentinel connections too."""
    await client.aclose()
    if isinstance(client, RedisCluster):
        return
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        await sentinel.aclose()
