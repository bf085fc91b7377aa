"""Where each family of Redis keys lives: one Redis, or a Sentinel-managed master/replica set.

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
  (`replica_client`).

This module only parses and builds clients; it does no I/O until a client
is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from streams.security import redis_options, redis_tls_options
from streams.settings import Settings

KeyFamily = Literal["sessions", "ai", "voice"]
KEY_FAMILIES: Final[tuple[KeyFamily, ...]] = ("sessions", "ai", "voice")
"""The families of keys of SPEC §8, each with a Redis target of its own."""

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


@dataclass(frozen=True, slots=True)
class Target:
    """One family's Redis, parsed from its URL (secrets included: never log it)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    """Sentinel addresses; empty for a single Redis."""
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

    def describe(self) -> str:
        """A name for logs and `rpcache check`, without any secret."""
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
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise ValueError(
            f"unknown Redis URL scheme {scheme!r}: use redis://, rediss://,"
            " redis+sentinel:// or rediss+sentinel://"
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
    """
    if not target.is_sentinel:
        return Redis.from_url(target.url, **redis_options(settings, target.url), **kwargs)
    client: Redis = _sentinel(target, settings, **kwargs).master_for(target.master_name)
    return client


def replica_client(target: Target, settings: Settings, **kwargs: Any) -> Redis | None:
    """A client that reads from the replicas (round robin, the master when none
    answers), or None for a single Redis."""
    if not target.is_sentinel:
        return None
    client: Redis = _sentinel(target, settings, **kwargs).slave_for(target.master_name)
    return client


@dataclass
class RedisTargets:
    """Every family's master client (and replica client, for Sentinel targets).

    Families whose URLs are equal share one client, so the default (REDIS_URL
    for all) is one connection pool as before.
    """

    targets: dict[KeyFamily, Target]
    masters: dict[KeyFamily, Redis]
    replicas: dict[KeyFamily, Redis | None]

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
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RedisTargets:
        """Clients for every family; `kwargs` go to each client (timeouts, decoding)."""
        by_url: dict[str, tuple[Target, Redis, Redis | None]] = {}
        targets: dict[KeyFamily, Target] = {}
        masters: dict[KeyFamily, Redis] = {}
        replicas: dict[KeyFamily, Redis | None] = {}
        for family, url in target_urls(settings).items():
            if url not in by_url:
                target = parse_target(url)
                by_url[url] = (
                    target,
                    master_client(target, settings, **kwargs),
                    replica_client(target, settings, **kwargs),
                )
            targets[family], masters[family], replicas[family] = by_url[url]
        return cls(targets, masters, replicas)

    def master_for(self, key: str) -> Redis:
        return self.masters[key_family(key)]

    def distinct(self) -> list[tuple[tuple[KeyFamily, ...], Redis]]:
        """Each distinct master client with the families it serves, in family order."""
        seen: dict[int, tuple[list[KeyFamily], Redis]] = {}
        for family, client in self.masters.items():
            seen.setdefault(id(client), ([], client))[0].append(family)
        return [(tuple(families), client) for families, client in seen.values()]

    async def aclose(self) -> None:
        for _, client in self.distinct():
            await close_client(client)
        for replica in {id(r): r for r in self.replicas.values() if r is not None}.values():
            await close_client(replica)


async def close_client(client: Redis) -> None:
    """Close a client, and for a Sentinel-managed one the Sentinel connections too."""
    await client.aclose()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", []):
        await sentinel.aclose()
