"""Security settings → the options every Kafka and Redis client gets (streams/security.py)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError

from streams.security import faust_credentials, kafka_options, redact, redis_options
from streams.settings import Settings

SASL = {"kafka_sasl_username": "svc", "kafka_sasl_password": "pa:ss@w/rd"}


@pytest.mark.parametrize(
    ("fields", "protocol", "tls", "sasl"),
    [
        ({}, "PLAINTEXT", False, False),
        ({"kafka_security_protocol": "SSL"}, "SSL", True, False),
        ({"kafka_security_protocol": "sasl_plaintext", **SASL}, "SASL_PLAINTEXT", False, True),
        ({"kafka_security_protocol": "SASL_SSL", **SASL}, "SASL_SSL", True, True),
    ],
)
def test_kafka_options_per_protocol(
    fields: dict[str, Any], protocol: str, tls: bool, sasl: bool
) -> None:
    settings = Settings(kafka_bootstrap_servers="a:9094,b:9094", **fields)
    options = kafka_options(settings)
    assert options["bootstrap_servers"] == ["a:9094", "b:9094"]
    assert options["security_protocol"] == protocol
    assert ("ssl_context" in options) is tls
    assert ("sasl_mechanism" in options) is sasl
    if tls:
        assert options["ssl_context"].check_hostname is True  # verification on by default
        assert options["ssl_context"].verify_mode is ssl.CERT_REQUIRED
    if sasl:
        assert options["sasl_plain_password"] == "pa:ss@w/rd"
    # Faust's consumer, producer and admin get the same protocol from broker_credentials.
    faust = credentials_to_aiokafka_auth(faust_credentials(settings))
    assert faust["security_protocol"] == protocol


@pytest.mark.parametrize("mechanism", ["PLAIN", "scram-sha-256", "SCRAM-SHA-512"])
def test_sasl_mechanisms(mechanism: str) -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism, **SASL)
    assert kafka_options(settings)["sasl_mechanism"] == mechanism.upper()
    credentials = faust_credentials(settings)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.mechanism.value == mechanism.upper()


def test_ssl_alone_gives_faust_ssl_credentials() -> None:
    assert isinstance(faust_credentials(Settings(kafka_security_protocol="SSL")), SSLCredentials)
    assert faust_credentials(Settings()) is None


def test_hostname_verification_can_be_turned_off() -> None:
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_check_hostname=False)
    assert kafka_options(settings)["ssl_context"].check_hostname is False


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"},
            "KAFKA_SASL_PASSWORD",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"kafka_ssl_certfile": "/c.pem"}, "KAFKA_SSL_KEYFILE"),
    ],
)
def test_incomplete_security_settings_are_refused(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**fields)
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    ("url", "fields", "want"),
    [
        ("redis://localhost:6379/0", {"redis_ssl_ca_certs": "/ca.pem"}, {}),
        ("rediss://u:p@localhost:6380/0", {}, {"ssl_check_hostname": True}),
        (
            "rediss://u:p@localhost:6380/0",
            {
                "redis_ssl_ca_certs": "/ca.pem",
                "redis_ssl_certfile": "/c",
                "redis_ssl_keyfile": "/k",
            },
            {
                "ssl_check_hostname": True,
                "ssl_ca_certs": "/ca.pem",
                "ssl_certfile": "/c",
                "ssl_keyfile": "/k",
            },
        ),
    ],
)
def test_redis_tls_options(url: str, fields: dict[str, Any], want: dict[str, Any]) -> None:
    assert redis_options(Settings(redis_url=url, **fields), url) == want


def test_every_secret_is_redacted_and_none_shows_in_reprs() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="svc",
        kafka_sasl_password="kafka-pw-1",
        kafka_ssl_key_password="key-pw-2",
        redis_url="rediss://app:redis%2Fpw-3@h:6380/0",
        database_url="postgresql://app:pg-pw-4@h:5432/db?sslmode=verify-full",
    )
    text = "kafka-pw-1 key-pw-2 redis%2Fpw-3 redis/pw-3 pg-pw-4"
    assert redact(text, settings) == "*** *** *** *** ***"
    shown = f"{settings!r} {settings} {settings.redacted()}"
    for secret in ("kafka-pw-1", "key-pw-2", "redis%2Fpw-3", "redis/pw-3", "pg-pw-4"):
        assert secret not in shown
