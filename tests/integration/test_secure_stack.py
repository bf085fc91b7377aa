"""The local stack's secure endpoints, proven with plain library clients (no rpcache client).

Every stack `rpcache stack up` starts has them beside the plain ones
(streams/tools/stack/secure.py): Kafka SASL_SSL on <port + 2> (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512), Redis TLS on <port + 1> with the ACL user `rpcache`,
PostgreSQL TLS on its port with the role `rpcache` (TLS only). Each test uses
aiokafka, redis-py or asyncpg directly with the settings of `rpcache stack env
--secure` (`secure_env`), so what is proven is the servers, not rpcache's
clients. For each server: the user gets in over TLS verified against the
stack's CA (`localhost` checked), a wrong password is refused, and a client
that trusts only another CA (`untrusted-ca.pem`) refuses the server.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from redis import asyncio as aioredis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.settings import get_settings
from streams.tools.stack import StackError, TlsPaths, secure_env, tls_paths
from streams.tools.stack.common import address_from_hostport, address_from_url, port_open
from tests import needs

pytestmark = pytest.mark.integration
RUN = uuid.uuid4().hex[:8]
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


@dataclass(frozen=True)
class Secure:
    env: dict[str, str]
    tls: TlsPaths

    @property
    def username(self) -> str:
        return self.env["KAFKA_SASL_USERNAME"]

    @property
    def password(self) -> str:
        return self.env["KAFKA_SASL_PASSWORD"]

    def context(self, trusted: str | None = None) -> ssl.SSLContext:
        """A client TLS context that trusts only `trusted` (default: the stack's CA)."""
        return ssl.create_default_context(cafile=trusted or str(self.tls.ca))


@pytest.fixture(scope="module")
def secure() -> Secure:
    """The secure settings, once the three secure ports accept connections."""
    settings = get_settings()
    hint = "run `rpcache stack down` then `rpcache stack up --secure`"
    try:
        env = secure_env(settings)
    except StackError as exc:
        needs.missing(f"the stack has no secure endpoints ({exc})")
    closed = [
        str(address)
        for address in (
            address_from_hostport(env["KAFKA_BOOTSTRAP_SERVERS"], 9094),
            address_from_url(env["REDIS_URL"], 6380),
            address_from_url(env["DATABASE_URL"], 5432),
        )
        if not port_open(address, timeout=2)
    ]
    if closed:
        needs.missing(f"the stack's secure endpoints do not answer at {', '.join(closed)}: {hint}")
    return Secure(env, tls_paths(settings))


# --- Kafka: SASL_SSL ------------------------------------------------------------------


def kafka_options(secure: Secure, mechanism: str, **overrides: object) -> dict[str, object]:
    options: dict[str, object] = {
        "bootstrap_servers": secure.env["KAFKA_BOOTSTRAP_SERVERS"],
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": secure.username,
        "sasl_plain_password": secure.password,
        "ssl_context": secure.context(),
        "request_timeout_ms": 10_000,
    }
    return {**options, **overrides}


@pytest.fixture(scope="module")
async def kafka_topic(secure: Secure) -> AsyncIterator[str]:
    """A topic created, and deleted at the end, over SASL_SSL (SCRAM-SHA-512)."""
    topic = f"secure-stack-{RUN}"
    admin = AIOKafkaAdminClient(**kafka_options(secure, "SCRAM-SHA-512"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        yield topic
        await admin.delete_topics([topic])
    finally:
        await admin.close()


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_kafka_sasl_ssl_produce_and_consume(
    secure: Secure, kafka_topic: str, mechanism: str
) -> None:
    """A producer and a consumer authenticate with each mechanism; the message comes back."""
    value = f"{mechanism} {uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(**kafka_options(secure, mechanism), acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(kafka_topic, value, key=mechanism.encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        **kafka_options(secure, mechanism),
        group_id=f"secure-stack-{RUN}-{mechanism}",
        auto_offset_reset="earliest",
    )
    consumer.assign([sent.topic_partition])
    await consumer.start()
    try:
        consumer.seek(sent.topic_partition, sent.offset)
        received = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()  # the group coordinator answers over SASL_SSL too
    finally:
        await consumer.stop()
    assert received.value == value
    assert received.offset == sent.offset


async def _kafka_refused(
    secure: Secure, caplog: pytest.LogCaptureFixture, **overrides: object
) -> str:
    """Start a producer that must be refused; aiokafka's log says why."""
    caplog.set_level(logging.ERROR, logger="aiokafka")
    producer = AIOKafkaProducer(**kafka_options(secure, "SCRAM-SHA-256", **overrides))
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()
    return caplog.text


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_kafka_wrong_password_refused(
    secure: Secure, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    why = await _kafka_refused(
        secure,
        caplog,
        sasl_mechanism=mechanism,
        sasl_plain_password=secure.password + "-wrong",
    )
    assert "SaslAuthenticationFailed" in why, why
    assert secure.password not in why


async def test_kafka_untrusted_certificate_refused(
    secure: Secure, caplog: pytest.LogCaptureFixture
) -> None:
    why = await _kafka_refused(
        secure, caplog, ssl_context=secure.context(str(secure.tls.untrusted_ca))
    )
    assert "CERTIFICATE_VERIFY_FAILED" in why, why


# --- Redis: TLS and the ACL user ---------------------------------------------------------


def redis_client(
    secure: Secure, url: str | None = None, ssl_ca_certs: str | None = None
) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url or secure.env["REDIS_URL"],
        ssl_ca_certs=ssl_ca_certs or secure.env["REDIS_SSL_CA_CERTS"],
        socket_connect_timeout=5,
        socket_timeout=5,
    )


async def test_redis_tls_acl_user(secure: Secure) -> None:
    assert urlsplit(secure.env["REDIS_URL"]).scheme == "rediss"
    client = redis_client(secure)
    try:
        assert await client.acl_whoami() == secure.username
        key = f"secure-stack:{RUN}"
        await client.set(key, "over TLS", ex=60)
        assert await client.get(key) == b"over TLS"
        await client.delete(key)
    finally:
        await client.aclose()


async def test_redis_wrong_password_refused(secure: Secure) -> None:
    parts = urlsplit(secure.env["REDIS_URL"])
    wrong = parts._replace(
        netloc=f"{secure.username}:{quote(secure.password + '-wrong', safe='')}@"
        f"{parts.hostname}:{parts.port}"
    ).geturl()
    client = redis_client(secure, wrong)
    try:
        with pytest.raises(AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()


async def test_redis_untrusted_certificate_refused(secure: Secure) -> None:
    client = redis_client(secure, ssl_ca_certs=str(secure.tls.untrusted_ca))
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.ping()
    finally:
        await client.aclose()


# --- PostgreSQL: TLS, the role over TLS only -----------------------------------------------


def _with_query(url: str, **params: str) -> str:
    """The URL with some query parameters replaced."""
    parts = urlsplit(url)
    query = dict(pair.split("=", 1) for pair in parts.query.split("&") if pair)
    return parts._replace(
        query="&".join(f"{k}={v}" for k, v in {**query, **params}.items())
    ).geturl()


async def test_postgres_tls_verify_full(secure: Secure) -> None:
    url = secure.env["DATABASE_URL"]
    assert "sslmode=verify-full" in url
    conn = await asyncpg.connect(url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT current_user AS who, ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        assert row is not None
        assert row["who"] == secure.username
        assert row["ssl"] is True
        assert row["version"].startswith("TLSv1.")
        # The role may create databases (the tests make one per run).
        assert await conn.fetchval("SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()


async def test_postgres_wrong_password_refused(secure: Secure) -> None:
    parts = urlsplit(secure.env["DATABASE_URL"])
    wrong = parts._replace(
        netloc=f"{secure.username}:{quote(secure.password + '-wrong', safe='')}@"
        f"{parts.hostname}:{parts.port}"
    ).geturl()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong, timeout=10)


async def test_postgres_untrusted_certificate_refused(secure: Secure) -> None:
    url = _with_query(secure.env["DATABASE_URL"], sslrootcert=quote(str(secure.tls.untrusted_ca)))
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(url, timeout=10)


async def test_postgres_role_refused_without_tls(secure: Secure) -> None:
    """pg_hba rejects the role on a connection without TLS, right password or not."""
    url = _with_query(secure.env["DATABASE_URL"], sslmode="disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(url, timeout=10)
