"""Before the worker starts: does every server accept rpcache's credentials and trust?

A wrong password, an ACL user that may not connect, or a certificate the
client does not trust will not pass by waiting: the worker says so in one
line per server (which server, at which address, what it refused, which
setting to look at) and exits with status 78 (EX_CONFIG of sysexits.h), so
an operator sees it at once instead of a worker that waits forever or a
crash loop of tracebacks. A server that does not answer yet is not a
refusal: the worker starts and waits for it as it always does.

Later, while running, the same refusals (a password rotated under a running
worker) are waited out like any other server failure (streams/errors.py): a
stored batch is never dropped for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import asyncpg.exceptions as pg_errors
import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors
from aiokafka.conn import create_conn

from streams.database import asyncpg_options
from streams.security import kafka_options, redact, redis_from_settings
from streams.settings import Settings

EXIT_CONFIG = 78
"""EX_CONFIG (sysexits.h): a configuration error; restarting alone cannot fix it."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """One server refused rpcache: who, where, what, and which settings to check."""

    server: str
    address: str
    what: str
    settings: str

    def describe(self) -> str:
        return (
            f"{self.server} at {self.address} refused rpcache: {self.what} (check {self.settings})"
        )


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind `exc` (clients wrap it in their own connection errors)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_what(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({error.verify_message})"
    return f"the TLS handshake failed ({error.reason or error})"


async def kafka_refusal(settings: Settings, timeout_s: float) -> Refusal | None:
    """Connect to each bootstrap server as the clients do; the first refusal, if any."""
    options = kafka_options(settings)
    options.pop("bootstrap_servers")
    names = "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*"
    for server in settings.kafka_servers:
        host, _, port = server.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **options),
                timeout_s,
            )
        except (kafka_errors.SaslAuthenticationFailed, kafka_errors.AuthenticationFailedError) as e:
            what = f"SASL {settings.kafka_sasl_mechanism} authentication of user"
            what += f" {settings.kafka_sasl_username!r} failed ({e})"
            return Refusal("Kafka", server, what, "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD")
        except (
            kafka_errors.UnsupportedSaslMechanismError,
            kafka_errors.IllegalSaslStateError,
            kafka_errors.AuthenticationMethodNotSupported,
        ) as e:
            return Refusal("Kafka", server, f"SASL mechanism refused ({e})", names)
        except Exception as e:
            tls = _tls_failure(e)
            if tls is not None:
                return Refusal("Kafka", server, _tls_what(tls), "KAFKA_SSL_CAFILE, " + names)
            continue  # not answering (yet): the worker waits for it
        conn.close()
    return None


async def redis_refusal(settings: Settings, timeout_s: float) -> Refusal | None:
    url = settings.redis_url.get_secret_value()
    address = urlsplit(url).netloc.rpartition("@")[2]
    client = redis_from_settings(
        settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        await client.ping()
    except (redis_errors.AuthenticationError, redis_errors.NoPermissionError) as e:
        what = f"the ACL user or password was refused ({e})"
        return Refusal("Redis", address, what, "the user and password of REDIS_URL")
    except Exception as e:
        tls = _tls_failure(e)
        if tls is not None:
            return Refusal("Redis", address, _tls_what(tls), "REDIS_SSL_CA_CERTS, REDIS_URL")
        if isinstance(e, redis_errors.ResponseError):  # e.g. a TLS port spoken to in plain
            return Refusal("Redis", address, f"it answered {e}", "REDIS_URL")
        return None
    finally:
        await client.aclose()
    return None


async def postgres_refusal(settings: Settings, timeout_s: float) -> Refusal | None:
    url = settings.database_url.get_secret_value()
    parts = urlsplit(url)
    address = parts.netloc.rpartition("@")[2] or "localhost"
    try:
        conn = await asyncpg.connect(url, timeout=timeout_s, **asyncpg_options(settings))
    except pg_errors.InvalidAuthorizationSpecificationError as e:  # 28000, 28P01
        return Refusal("PostgreSQL", address, str(e), "the user and password of DATABASE_URL")
    except pg_errors.InvalidCatalogNameError:
        return None  # the database is created by a migration runner or an operator: wait
    except Exception as e:
        tls = _tls_failure(e)
        if tls is not None:
            return Refusal(
                "PostgreSQL", address, _tls_what(tls), "sslmode / sslrootcert of DATABASE_URL"
            )
        if isinstance(e, ConnectionError) and "SSL" in str(e):  # sslmode=require, no TLS
            return Refusal("PostgreSQL", address, str(e), "sslmode of DATABASE_URL")
        return None
    await conn.close()
    return None


async def refusals(settings: Settings, timeout_s: float = 5.0) -> list[str]:
    """One line per server that refused rpcache's credentials or TLS; [] when none did.

    Lines never hold a secret (`security.redact`).
    """
    probes: list[Callable[[Settings, float], Awaitable[Refusal | None]]] = [
        kafka_refusal,
        redis_refusal,
        postgres_refusal,
    ]
    found = await asyncio.gather(*(probe(settings, timeout_s) for probe in probes))
    return [redact(r.describe(), settings) for r in found if r is not None]


async def exit_unless_admitted(settings: Settings, timeout_s: float) -> None:
    """Exit 78 with one line per server that refuses our credentials or TLS; return
    when none does (a server that does not answer yet is waited for later)."""
    found = await refusals(settings, timeout_s)
    if not found:
        return
    log = logging.getLogger("streams.worker")
    for line in found:
        log.error("%s", line)
    log.error("rpcache worker cannot start: exiting with status %d", EXIT_CONFIG)
    logging.shutdown()
    os._exit(EXIT_CONFIG)
