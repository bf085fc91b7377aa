"""Redis targets per key family and their URLs (streams/redis_targets.py, SPEC §8)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.observe.check import judge_policy
from streams.redis_targets import (
    Target,
    cluster_client,
    key_family,
    master_client,
    parse_target,
    replica_client,
    target_urls,
)
from streams.settings import Settings


@pytest.mark.parametrize(
    ("key", "family"),
    [
        ("session:550e8400-e29b-41d4-a716-446655440000", "sessions"),
        ("user:user123:state", "sessions"),
        ("metrics:response_time:1m", "sessions"),
        ("stats:realtime:2026-11-29", "sessions"),
        ("rpcache:loaded", "sessions"),
        ("scenario:cafe:context", "sessions"),
        ("ai_response:125aeadf27b0459b8760c13a3d80912d", "ai"),
        ("voice:6:65b426ed729984f0146591dcae6c1edc", "voice"),
    ],
)
def test_key_family(key: str, family: str) -> None:
    assert key_family(key) == family


@pytest.mark.parametrize(
    ("url", "fields"),
    [
        ("redis://localhost:6379/0", {"sentinels": (), "db": 0, "tls": False}),
        ("rediss://u:p@cache:6380/3", {"sentinels": (), "db": 3, "tls": True}),
        (
            "redis+sentinel://localhost:26379,localhost:26380/sessions/2",
            {
                "sentinels": (("localhost", 26379), ("localhost", 26380)),
                "master_name": "sessions",
                "db": 2,
                "password": None,
            },
        ),
        (
            "rediss+sentinel://app:s%40cret@s1:26379/voice?sentinel_password=sp",
            {
                "sentinels": (("s1", 26379),),
                "master_name": "voice",
                "db": 0,
                "username": "app",
                "password": "s@cret",
                "tls": True,
                "sentinel_password": "sp",
            },
        ),
    ],
)
def test_parse_target(url: str, fields: dict[str, Any]) -> None:
    target = parse_target(url)
    for name, value in fields.items():
        assert getattr(target, name) == value, name
    assert "cret" not in target.describe()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("memcached://x", "unknown Redis URL scheme"),
        ("redis+sentinel://s1:26379", "master name"),
        ("redis+sentinel:///m", "at least one Sentinel"),
        ("redis+cluster://", "at least one seed node"),
        ("redis+cluster://u:p@/0", "at least one seed node"),
        ("redis+cluster://n1:7000/1", "database 0 only"),
        ("rediss+cluster://n1:7000/15", "database 0 only"),
        ("redis+cluster://n1:7000/abc", "database 0 only"),
        ("redis+cluster://n1:7000/0/1", "database 0 only"),
        ("redis+cluster://n1:7000,n2:port", "bad port"),
        ("redis+cluster://n1:70000", "bad port"),
        ("redis+cluster://n1:7000,:7001", "no host"),
        ("redis+cluster://[::1]x", "bad seed node"),
        ("redis+cluster://n1:7000?read_from_replicas=1", "no query options"),
    ],
)
def test_bad_target_urls(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_target(url)


@pytest.mark.parametrize(
    ("url", "fields"),
    [
        (
            "redis+cluster://127.0.0.1:6401",
            {"cluster_nodes": (("127.0.0.1", 6401),), "tls": False, "username": None},
        ),
        (
            "redis+cluster://127.0.0.1:6401,127.0.0.1:6402,127.0.0.1:6403/0",
            {
                "cluster_nodes": (("127.0.0.1", 6401), ("127.0.0.1", 6402), ("127.0.0.1", 6403)),
                "db": 0,
            },
        ),
        ("redis+cluster://node-a/", {"cluster_nodes": (("node-a", 6379),)}),
        (
            "rediss+cluster://app:s%40cret@n1:7000,n2:7001",
            {
                "cluster_nodes": (("n1", 7000), ("n2", 7001)),
                "username": "app",
                "password": "s@cret",
                "tls": True,
            },
        ),
        (
            "REDIS+CLUSTER://:only-password@[::1]:7000,[fe80::1]",
            {
                "cluster_nodes": (("::1", 7000), ("fe80::1", 6379)),
                "username": None,
                "password": "only-password",
            },
        ),
    ],
)
def test_parse_cluster_target(url: str, fields: dict[str, Any]) -> None:
    target = parse_target(url)
    assert (target.kind, target.is_cluster, target.is_sentinel) == ("cluster", True, False)
    assert (target.sentinels, target.master_name, target.db) == ((), "", 0)
    for name, value in fields.items():
        assert getattr(target, name) == value, name
    shown = target.describe()
    assert shown.startswith("cluster ") and "cret" not in shown and "password" not in shown


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://localhost:6379/0", "single"),
        ("redis+sentinel://s:26379/m", "sentinel"),
        ("redis+cluster://n:7000", "cluster"),
    ],
)
def test_target_kind(url: str, kind: str) -> None:
    assert parse_target(url).kind == kind


async def test_cluster_client_from_seeds_with_credentials_and_tls() -> None:
    """Built without I/O: the seeds, the ACL user and the REDIS_SSL_* options reach it."""
    settings = Settings(redis_ssl_ca_certs="/tmp/ca.pem", redis_ssl_check_hostname=False)
    target = parse_target("rediss+cluster://app:pw@n1:7000,n2:7001")
    client = cluster_client(target, settings, socket_timeout=2)
    try:
        seeds = [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
        assert seeds == [("n1", 7000), ("n2", 7001)]
        kwargs = client.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("app", "pw")
        assert kwargs["ssl_ca_certs"] == "/tmp/ca.pem"
        assert kwargs["ssl_check_hostname"] is False
        assert kwargs["socket_timeout"] == 2
    finally:
        await client.aclose()
    plain = cluster_client(parse_target("redis+cluster://n1:7000"), Settings())
    try:
        assert "ssl_ca_certs" not in plain.connection_kwargs
        assert plain.connection_kwargs.get("username") is None
    finally:
        await plain.aclose()


def test_cluster_targets_have_no_single_master_client() -> None:
    target = parse_target("redis+cluster://n1:7000")
    with pytest.raises(ValueError, match="cluster_client"):
        master_client(target, Settings())
    assert replica_client(target, Settings()) is None
    with pytest.raises(ValueError, match="not a Redis Cluster"):
        cluster_client(parse_target("redis://localhost:6379/0"), Settings())


def test_each_family_defaults_to_redis_url() -> None:
    settings = Settings(
        redis_url="redis://default:6379/0", redis_voice_url="redis+sentinel://s:26379/voice"
    )
    assert target_urls(settings) == {
        "sessions": "redis://default:6379/0",
        "ai": "redis://default:6379/0",
        "voice": "redis+sentinel://s:26379/voice",
    }


def test_family_urls_are_secrets() -> None:
    settings = Settings(redis_ai_url="redis+sentinel://:pw-1@s:26379/ai?sentinel_password=pw-2")
    assert "pw-1" in settings.secrets() and "pw-2" in settings.secrets()
    shown = f"{settings!r} {settings.redacted()}"
    assert "pw-1" not in shown and "pw-2" not in shown
    assert isinstance(parse_target(target_urls(settings)["ai"]), Target)


@pytest.mark.parametrize(
    ("families", "policy", "fits"),
    [
        (("sessions", "ai", "voice"), "volatile-lru", True),  # one Redis: the shared rule
        (("sessions", "ai", "voice"), "noeviction", True),
        (("sessions", "ai"), "volatile-ttl", True),
        (("sessions", "ai", "voice"), "allkeys-lru", False),
        (("sessions",), "noeviction", True),  # SPEC §8: never evicted before expiry
        (("sessions",), "volatile-ttl", False),  # every key has a TTL: evicted early
        (("sessions",), "volatile-lru", False),
        (("sessions",), "allkeys-lfu", False),
        (("ai",), "allkeys-lru", True),
        (("ai",), "volatile-lru", True),
        (("ai",), "allkeys-lfu", False),
        (("voice",), "allkeys-lfu", True),
        (("voice",), "allkeys-lru", False),
        (("ai", "voice"), "allkeys-lru", False),  # voice wants LFU
    ],
)
def test_policy_per_family(families: tuple[str, ...], policy: str, fits: bool) -> None:
    why = judge_policy(families, policy)  # type: ignore[arg-type]
    assert (why is None) is fits, why
    if why:
        assert policy in why
