"""How rpcache authenticates to and encrypts towards each server: one place for every client.

Kafka: `security.protocol` PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL with
the SASL mechanisms PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512, as Kafka's
client configuration names them (librdkafka and the Java client alike).
`kafka_options` gives the keyword arguments of aiokafka's producer, consumer
and admin client; `faust_credentials` the same as Faust's
`broker_credentials`, so the worker's consumer, its producer (dead letters,
alerts) and Faust's topic creation use them too.

Redis: an ACL user and password in the URL (`rediss://user:password@host`),
TLS by the `rediss://` scheme with the CA / client-certificate settings
redis-py users know (`ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`,
`ssl_check_hostname`). `redis_options` adds them to every `Redis.from_url`.

PostgreSQL: TLS is asked for in DATABASE_URL as libpq users write it
(`?sslmode=verify-full&sslrootcert=/path/ca.pem`, `sslcert`, `sslkey`), which
asyncpg reads itself; nothing to add here.

Hostname verification is on by default everywhere a certificate is checked.
Secrets come from the environment only (streams/settings.py keeps them as
`SecretStr`); `redact` takes them out of any text before it is logged.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from redis.asyncio import Redis

from streams.settings import Settings


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients, or None for PLAINTEXT / SASL_PLAINTEXT.

    Without KAFKA_SSL_CAFILE the system's trusted CAs are used (a managed
    Kafka with a public certificate); a client certificate is sent when
    KAFKA_SSL_CERTFILE is set (mutual TLS).
    """
    if not settings.kafka_uses_tls:
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        password=(
            settings.kafka_ssl_key_password.get_secret_value()
            if settings.kafka_ssl_key_password
            else None
        ),
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_uses_sasl:
        assert settings.kafka_sasl_password is not None  # the settings validate this
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the same protocol (Faust derives SASL_SSL from a
    SASL credential with an SSL context, SSL from an SSL credential), or None.

    Faust is imported here, not at the top: producers and readers that import
    this module never load it.
    """
    from faust.auth import SASLCredentials, SSLCredentials
    from faust.types.auth import SASLMechanism

    context = kafka_ssl_context(settings)
    if settings.kafka_uses_sasl:
        assert settings.kafka_sasl_password is not None
        return SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=SASLMechanism(settings.kafka_sasl_mechanism),
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def redis_options(settings: Settings, url: str) -> dict[str, Any]:
    """TLS keyword arguments for `Redis.from_url(url)`: none unless `url` is `rediss://`.

    The ACL user and password travel in the URL; redis-py sends AUTH with
    both on every new connection, the sink's hand-packed pipeline included
    (it writes on a connection taken from the client's pool).
    """
    if not url.startswith("rediss://"):
        return {}
    return redis_tls_options(settings)


def redis_tls_options(settings: Settings) -> dict[str, Any]:
    """The CA, client certificate and hostname check of REDIS_SSL_* (redis-py's names)."""
    options: dict[str, Any] = {"ssl_check_hostname": settings.redis_ssl_check_hostname}
    if settings.redis_ssl_ca_certs:
        options["ssl_ca_certs"] = settings.redis_ssl_ca_certs
    if settings.redis_ssl_certfile:
        options["ssl_certfile"] = settings.redis_ssl_certfile
    if settings.redis_ssl_keyfile:
        options["ssl_keyfile"] = settings.redis_ssl_keyfile
    return options


def redact(text: str, settings: Settings) -> str:
    """`text` with every secret of `settings` replaced by `***` (before it is logged)."""
    for secret in settings.secrets():
        if secret:
            text = text.replace(secret, "***")
    return text


def redis_from_settings(settings: Settings, url: str | None = None, **kwargs: Any) -> Redis:
    """`Redis.from_url(url or REDIS_URL, **kwargs)` with the TLS options of `redis_options`."""
    url = url or settings.redis_url.get_secret_value()
    return Redis.from_url(url, **redis_options(settings, url), **kwargs)
