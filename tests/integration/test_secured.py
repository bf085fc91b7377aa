"""rpcache against secured servers: Kafka SASL_SSL (SCRAM), Redis ACL + TLS, PostgreSQL TLS.

The local stack's secure endpoints (`rpcache stack up --secure`, `rpcache
stack env --secure`): the session slice, the publisher, the reader and
`rpcache check` work through them; a wrong password or an untrusted
certificate for each server stops the worker at start with one clear line
and status 78; no secret ever shows in a log line, `/metrics`,
`/dashboard.json`, a dead letter or `rpcache check`'s output.
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from schemas.keys import session_key
from streams.read.reader import CacheReader
from streams.security import kafka_options
from streams.settings import Settings, get_settings
from streams.tools.stack import secure_env, tls_paths
from tests.integration.conftest import (
    RUN,
    WorkerProcess,
    eventually,
    isolated_run,
    rpcache_check,
)

pytestmark = pytest.mark.integration

WRONG = "not-the-password-7f3a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def secure(test_env: dict[str, str]) -> dict[str, str]:
    """The test environment pointed at the stack's secure endpoints."""
    return {**test_env, **secure_env(get_settings())}


def _passwords(env: dict[str, str]) -> list[str]:
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    return [s for s in settings.secrets() if len(s) >= 6 and "://" not in s]


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{quote(password)}@{host}"))


async def _read_dead_letters(settings: Settings, want: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        f"{settings.topic_prefix}dead-letters",
        **kafka_options(settings),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(seen) < want and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                seen += [m.value for m in batch if m.value is not None]
    finally:
        await consumer.stop()
    return seen


async def test_session_slice_reader_check_and_no_secret_anywhere(
    secure: dict[str, str],
) -> None:
    port = _free_port()
    extra = {"WORKER_WEB_ENABLED": "true", "WORKER_WEB_PORT": str(port)}
    async with isolated_run(secure, "secured", 1, **extra) as run:
        secrets = _passwords(run.env)
        assert secrets, "the secure environment carries passwords"
        # The publisher over SASL_SSL; the worker's consumer, sink and pool over TLS.
        sid = await run.publisher.session_started("sec-user", speaker_id=4)
        await run.publisher.session_activity("sec-user", sid, performance_stats={"wpm": 99})
        await run.publisher.publish_raw(
            f"{run.settings.topic_prefix}session-events", b"sec-user", b"{not json"
        )
        await eventually(
            lambda: run.redis.hget(session_key(sid), "performance_stats"),
            lambda v: v == '{"wpm":99}',
        )
        # The reader: Redis over TLS with the ACL user, PostgreSQL over TLS.
        async with CacheReader.from_settings(run.settings) as reader:
            read = await reader.get_session(sid)
            assert (read.source, read.value and read.value["user_id"]) == ("redis", "sec-user")
            await run.redis.delete(session_key(sid))
            read = await reader.get_session(sid)
            assert read.source == "postgres"
        status, check_out = await rpcache_check(run.env)
        assert status == 0, check_out
        dead = await _read_dead_letters(run.settings, 1)
        assert [orjson.loads(d)["reason"] for d in dead] == ["invalid_json"]

        base = f"http://127.0.0.1:{port}"
        metrics = await asyncio.to_thread(_get, f"{base}/metrics")
        dashboard = await asyncio.to_thread(_get, f"{base}/dashboard.json")
        assert b"rpcache" in metrics and b"{" in dashboard
        texts = {
            "worker log": run.worker.log_text().encode(),
            "/metrics": metrics,
            "/dashboard.json": dashboard,
            "dead letters": b"\n".join(dead),
            "rpcache check": check_out.encode(),
        }
        for where, text in texts.items():
            for secret in secrets:
                assert secret.encode() not in text, f"a password shows in {where}"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def _refusal_cases() -> list[tuple[str, str, str]]:
    """(case, what to change in the secure environment, the line the worker must print)."""
    return [
        ("kafka-password", "KAFKA_SASL_PASSWORD", "Kafka at localhost:9094 refused rpcache: SASL"),
        ("redis-password", "REDIS_URL", "Redis at localhost:6380 refused rpcache: the ACL user"),
        ("postgres-password", "DATABASE_URL", "PostgreSQL at localhost:5432 refused rpcache:"),
        ("kafka-untrusted", "KAFKA_SSL_CAFILE", "Kafka at localhost:9094 refused rpcache: its TLS"),
        (
            "redis-untrusted",
            "REDIS_SSL_CA_CERTS",
            "Redis at localhost:6380 refused rpcache: its TLS",
        ),
        (
            "postgres-untrusted",
            "sslrootcert",
            "PostgreSQL at localhost:5432 refused rpcache: its TLS",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "name", "line"), _refusal_cases(), ids=[c[0] for c in _refusal_cases()]
)
async def test_a_refused_credential_or_certificate_stops_the_worker_with_one_line(
    secure: dict[str, str], case: str, name: str, line: str
) -> None:
    untrusted = str(tls_paths(get_settings()).untrusted_ca)
    env = {
        **secure,
        "TOPIC_PREFIX": f"test-{RUN}-{case}.",
        "APP_ID": f"rpcache-test-{RUN}-{case}",
    }
    if name == "KAFKA_SASL_PASSWORD":
        env[name] = WRONG
    elif name in ("REDIS_URL", "DATABASE_URL"):
        env[name] = _with_password(env[name], WRONG)
    elif name == "sslrootcert":
        env["DATABASE_URL"] = env["DATABASE_URL"].replace(
            f"sslrootcert={quote(str(tls_paths(get_settings()).ca), safe='/')}",
            f"sslrootcert={quote(untrusted, safe='/')}",
        )
        assert untrusted in env["DATABASE_URL"] or quote(untrusted, safe="/") in env["DATABASE_URL"]
    else:
        env[name] = untrusted
    worker = WorkerProcess(env, f"refused-{case}")
    worker.start()
    assert worker.proc is not None
    status = await asyncio.to_thread(worker.proc.wait, 60)
    log = worker.log_text()
    assert status == 78, log[-3000:]
    assert line in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    for secret in [WRONG, *_passwords(secure)]:
        assert secret not in log
    check_status, check_out = await rpcache_check(env)
    assert check_status != 0
    for secret in [WRONG, *_passwords(secure)]:
        assert secret not in check_out


async def test_a_wrong_password_never_reaches_the_check_output_either() -> None:
    """`rpcache check` says which server refused, without the password (no stack needed
    beyond PostgreSQL's plain endpoint refusing an unknown role)."""
    env = {
        "DATABASE_URL": f"postgresql://nobody:{WRONG}@localhost:5432/rpcache",
        "REDIS_URL": f"redis://nobody:{WRONG}@localhost:6379/0",
        "CHECK_TIMEOUT_S": "3",
    }
    status, out = await rpcache_check(env)
    assert status != 0
    assert WRONG not in out
