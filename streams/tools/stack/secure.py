"""The secure endpoints of the local stack: certificates, the `rpcache` user, `stack env`.

Why: production runs Kafka with SASL over TLS, Redis with an ACL user and TLS,
and PostgreSQL with TLS; rpcache's tests must reach the same kind of servers.
Every stack this version starts therefore has, beside its plain endpoints
(unchanged, for the default settings), secure ones:

| server     | secure endpoint                               | plain endpoint (as before) |
|------------|-----------------------------------------------|----------------------------|
| Kafka      | SASL_SSL on <port + 2> (9094): PLAIN, SCRAM   | PLAINTEXT on <port> (9092) |
| Redis      | TLS on <port + 1> (6380), ACL user `rpcache`  | <port> (6379)              |
| PostgreSQL | TLS on <port> (5432), role `rpcache` over TLS | <port>, `postgres` trusted |

The certificates are made once by `openssl` (no Python dependency) into
`<stack dir>/tls/`: a CA, a server certificate for `localhost` and 127.0.0.1
signed by it, and `untrusted-ca.pem`, a CA no server uses, for tests that show
an unknown certificate is refused. They are made again when missing or
expiring within 30 days. The user's password is random per stack directory,
in `<stack dir>/secure/credentials.json` (0600): `rpcache stack env --secure`
prints it for `eval`, `up` never does.

Nothing here talks to a server: each server module configures and probes its
own secure endpoint (`Service.secure_problem`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from streams.settings import Settings, get_settings
from streams.tools.stack.common import (
    Address,
    StackError,
    address_from_hostport,
    address_from_url,
    file_lock,
    require_binary,
    run,
    stack_root,
)

USERNAME = "rpcache"
"""The one user of every secure endpoint."""

KAFKA_SASL_SSL_OFFSET = 2
"""Kafka's SASL_SSL listener is on <port + 2> (its controller is on <port + 1>)."""
REDIS_TLS_OFFSET = 1
"""Redis's TLS port is <port + 1>."""
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 8192
"""Kafka's SCRAM iterations (its minimum is 4096)."""

TLS_HOSTNAME = "localhost"
"""The name clients use and verify; the certificate also holds IP 127.0.0.1."""
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_WITHIN_S = 30 * 86400
OPENSSL_HINT = "apt-get install openssl"
UP_SECURE = "rpcache stack up --secure"


# --- where the files are ------------------------------------------------------


@dataclass(frozen=True)
class TlsPaths:
    """The certificate files of one stack directory (`tls_paths(settings)`)."""

    directory: Path
    ca: Path
    """The CA every secure endpoint's certificate is signed by: what clients trust."""
    ca_key: Path
    server_cert: Path
    """The servers' certificate (SAN DNS:localhost, IP:127.0.0.1)."""
    server_key: Path
    """Its key, PKCS#8 PEM, 0600."""
    server_keystore: Path
    """Key and certificate in one PEM file (Kafka's `ssl.keystore.type=PEM`), 0600."""
    untrusted_ca: Path
    """A second CA no server uses: trusting only it must fail."""


def tls_paths(settings: Settings | None = None) -> TlsPaths:
    """Where the stack's certificates are (whether or not they exist yet)."""
    directory = stack_root(settings or get_settings()) / "tls"
    return TlsPaths(
        directory=directory,
        ca=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        server_keystore=directory / "server-keystore.pem",
        untrusted_ca=directory / "untrusted-ca.pem",
    )


def credentials_path(settings: Settings | None = None) -> Path:
    return stack_root(settings or get_settings()) / "secure" / "credentials.json"


# --- certificates ---------------------------------------------------------------

_SERVER_EXTENSIONS = f"""\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:{TLS_HOSTNAME}, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def ensure_tls(settings: Settings | None = None) -> list[str]:
    """Make the certificates that are missing or expire within 30 days; notes of what was made.

    Safe to call from the three servers' start-ups at once (a file lock).
    """
    paths = tls_paths(settings)
    notes: list[str] = []
    with file_lock(paths.directory.parent / ".tls.lock"):
        paths.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        openssl = require_binary("openssl", OPENSSL_HINT)
        started = time.monotonic()
        made: list[str] = []
        new_ca = not (_valid(openssl, paths.ca) and paths.ca_key.is_file())
        if new_ca:
            _make_ca(openssl, paths.ca, paths.ca_key, "rpcache local stack CA")
            made.append(paths.ca.name)
        if new_ca or not _server_valid(openssl, paths):
            _make_server(openssl, paths)
            made.append(paths.server_cert.name)
        if not _valid(openssl, paths.untrusted_ca):
            with tempfile.TemporaryDirectory(dir=paths.directory) as scratch:
                # Its key is thrown away: nothing is ever signed by this CA.
                key = Path(scratch) / "untrusted.key"
                _make_ca(openssl, paths.untrusted_ca, key, "rpcache untrusted CA (unused)")
            made.append(paths.untrusted_ca.name)
        if made:
            notes.append(
                f"made {', '.join(made)} in {paths.directory} ({time.monotonic() - started:.1f} s)"
            )
    return notes


def _valid(openssl: str, cert: Path) -> bool:
    """The certificate exists and is still valid 30 days from now."""
    if not cert.is_file():
        return False
    try:
        run([openssl, "x509", "-checkend", str(RENEW_WITHIN_S), "-noout", "-in", str(cert)])
    except StackError:
        return False
    return True


def _server_valid(openssl: str, paths: TlsPaths) -> bool:
    if not (paths.server_key.is_file() and paths.server_keystore.is_file()):
        return False
    if not _valid(openssl, paths.server_cert):
        return False
    try:
        run([openssl, "verify", "-CAfile", str(paths.ca), str(paths.server_cert)])
    except StackError:
        return False  # signed by a CA that was replaced
    return True


def _make_ca(openssl: str, cert: Path, key: Path, name: str) -> None:
    with tempfile.TemporaryDirectory(dir=cert.parent) as scratch:  # 0700
        tmp_cert, tmp_key = Path(scratch) / "cert", Path(scratch) / "key"
        run(
            [
                openssl, "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-days", str(CA_DAYS), "-subj", f"/CN={name}",
                "-addext", "basicConstraints = critical, CA:TRUE",
                "-addext", "keyUsage = critical, keyCertSign, cRLSign",
                "-keyout", str(tmp_key), "-out", str(tmp_cert),
            ]
        )  # fmt: skip
        tmp_key.chmod(0o600)
        tmp_cert.chmod(0o644)
        tmp_key.replace(key)
        tmp_cert.replace(cert)


def _make_server(openssl: str, paths: TlsPaths) -> None:
    with tempfile.TemporaryDirectory(dir=paths.directory) as scratch:
        work = Path(scratch)
        key, csr, cert, ext = (work / name for name in ("key", "csr", "cert", "ext"))
        ext.write_text(_SERVER_EXTENSIONS)
        run(
            [
                openssl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-subj", f"/CN={TLS_HOSTNAME}", "-keyout", str(key), "-out", str(csr),
            ]
        )  # fmt: skip
        run(
            [
                openssl, "x509", "-req", "-in", str(csr), "-sha256",
                "-CA", str(paths.ca), "-CAkey", str(paths.ca_key),
                "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(SERVER_DAYS),
                "-extfile", str(ext), "-out", str(cert),
            ]
        )  # fmt: skip
        key_pem, cert_pem = key.read_text(), cert.read_text()
        if "BEGIN PRIVATE KEY" not in key_pem:  # Kafka's PEM keystore wants PKCS#8
            raise StackError(f"`openssl req -nodes` did not write a PKCS#8 key in {key}")
        _write_private(paths.server_key, key_pem)
        _write_private(paths.server_keystore, key_pem + cert_pem)
        cert.chmod(0o644)
        cert.replace(paths.server_cert)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (never briefly world-readable)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp creates it 0600
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the user --------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The secure endpoints' user; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)


_SERVER_SAFE = re.compile(r"[A-Za-z0-9._~-]{16,}")
"""What a password may be made of to go unquoted into every server's configuration
(Kafka's JAAS and `--add-config` syntax, a java argument file): `secrets.token_urlsafe`'s."""


def ensure_credentials(settings: Settings | None = None) -> Credentials:
    """The stack directory's credentials, made (random password) on first use."""
    path = credentials_path(settings)
    with file_lock(path.parent.parent / ".credentials.lock"):
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.parent.chmod(0o700)
            made = Credentials(USERNAME, secrets.token_urlsafe(24))
            payload = {"username": made.username, "password": made.password}
            _write_private(path, json.dumps(payload))
            return made
        found = load_credentials(settings)
    if not (_SERVER_SAFE.fullmatch(found.password) and found.username == USERNAME):
        raise StackError(
            f"{path} holds a user other than {USERNAME!r} or a password with other "
            "characters than letters, digits and ._~- (or under 16 of them): delete "
            f"the file to get a new one, then run `rpcache stack down` and `{UP_SECURE}`"
        )
    return found


def load_credentials(settings: Settings | None = None) -> Credentials:
    """The credentials `rpcache stack up` made; StackError when there are none."""
    path = credentials_path(settings)
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["username"]), str(data["password"]))
    except FileNotFoundError:
        raise StackError(
            f"no credentials in {path}: no stack with secure endpoints was started from "
            f"this stack directory; run `{UP_SECURE}`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"unreadable credentials in {path} ({type(exc).__name__}); delete the file, "
            f"then run `rpcache stack down` and `{UP_SECURE}`"
        ) from None


# --- SCRAM (RFC 5802), shared by the Kafka probe and the PostgreSQL role ----------


def scram_salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802 (the password is ASCII: SASLprep is a no-op)."""
    return hashlib.pbkdf2_hmac(_scram_hash(mechanism), password.encode(), salt, iterations)


def scram_keys(mechanism: str, salted: bytes) -> tuple[bytes, bytes, bytes]:
    """ClientKey, StoredKey and ServerKey of a salted password."""
    name = _scram_hash(mechanism)
    client_key = hmac.new(salted, b"Client Key", name).digest()
    server_key = hmac.new(salted, b"Server Key", name).digest()
    return client_key, hashlib.new(name, client_key).digest(), server_key


def _scram_hash(mechanism: str) -> str:
    try:
        return {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    except KeyError:
        raise ValueError(f"not a SCRAM mechanism: {mechanism}") from None


def postgres_scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """What PostgreSQL stores for a scram-sha-256 password, computed here.

    Sending the verifier rather than the password (as libpq's
    PQencryptPasswordConn does) keeps the password out of the server's log,
    even when the statement fails and is logged.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = scram_salted_password("SCRAM-SHA-256", password, salt, iterations)
    _client, stored, server = scram_keys("SCRAM-SHA-256", salted)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored).decode()}:{b64(server).decode()}"
    )


def postgres_verifier_matches(verifier: str | None, password: str) -> bool:
    """True when a stored scram-sha-256 verifier is the one of `password`."""
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$.+", verifier or "")
    if match is None:
        return False
    try:
        salt = base64.b64decode(match.group(2), validate=True)
    except ValueError:
        return False
    expected = postgres_scram_verifier(password, salt, int(match.group(1)))
    return hmac.compare_digest(expected, verifier or "")


# --- where the secure endpoints are ----------------------------------------------


def _client_host(address: Address) -> str:
    """The host a client names: `localhost` (the certificate's name) for any local address."""
    return TLS_HOSTNAME if address.is_local else address.host


def kafka_secure_address(settings: Settings) -> Address:
    first = (settings.kafka_servers or ["localhost:9092"])[0]
    plain = address_from_hostport(first, 9092)
    return Address(_client_host(plain), plain.port + KAFKA_SASL_SSL_OFFSET)


def redis_secure_address(settings: Settings) -> Address:
    plain = address_from_url(settings.redis_url.get_secret_value(), 6379)
    return Address(_client_host(plain), plain.port + REDIS_TLS_OFFSET)


def postgres_secure_address(settings: Settings) -> Address:
    plain = address_from_url(settings.database_url.get_secret_value(), 5432)
    return Address(_client_host(plain), plain.port)


def postgres_database(settings: Settings) -> str:
    """The database of DATABASE_URL, also the secure user's."""
    parts = urlsplit(settings.database_url.get_secret_value())
    return parts.path.lstrip("/") or parts.username or "postgres"


# --- `rpcache stack env` ------------------------------------------------------------


def plain_env(settings: Settings | None = None) -> dict[str, str]:
    """The settings that point rpcache at the stack's plain endpoints."""
    settings = settings or get_settings()
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_URL": settings.redis_url.get_secret_value(),
        "DATABASE_URL": settings.database_url.get_secret_value(),
    }


def secure_env(settings: Settings | None = None) -> dict[str, str]:
    """The settings that point rpcache at the stack's secure endpoints.

    Reads the credentials `stack up` made (StackError when there are none);
    does not check that the servers answer (`rpcache stack up --secure` does).
    """
    settings = settings or get_settings()
    creds = load_credentials(settings)
    ca = str(tls_paths(settings).ca)
    user, password = quote(creds.username, safe=""), quote(creds.password, safe="")
    kafka = kafka_secure_address(settings)
    redis = redis_secure_address(settings)
    postgres = postgres_secure_address(settings)
    redis_db = urlsplit(settings.redis_url.get_secret_value()).path.lstrip("/") or "0"
    database = quote(postgres_database(settings), safe="")
    return {
        "KAFKA_BOOTSTRAP_SERVERS": str(kafka),
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": creds.username,
        "KAFKA_SASL_PASSWORD": creds.password,
        "KAFKA_SSL_CAFILE": ca,
        "REDIS_URL": f"rediss://{user}:{password}@{redis}/{redis_db}",
        "REDIS_SSL_CA_CERTS": ca,
        "DATABASE_URL": (
            f"postgresql://{user}:{password}@{postgres}/{database}"
            f"?sslmode=verify-full&sslrootcert={quote(ca, safe='/')}"
        ),
    }


def export_lines(env: dict[str, str]) -> list[str]:
    """`export NAME=value` lines for a POSIX shell's `eval`, values quoted as needed."""
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
