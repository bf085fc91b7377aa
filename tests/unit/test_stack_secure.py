"""`rpcache stack env` output and the secure stack's files, without any server."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from typer.testing import CliRunner

from streams.settings import Settings, get_settings
from streams.tools.stack import export_lines, secure_env
from streams.tools.stack.cli import stack_app
from streams.tools.stack.secure import (
    ensure_credentials,
    ensure_tls,
    postgres_scram_verifier,
    postgres_verifier_matches,
    tls_paths,
)

AWKWARD = "p@ss w'rd\"$HOME`x`;&|%2F:/?#[]\\"


def shell_eval(lines: list[str], names: list[str]) -> dict[str, str]:
    """What a POSIX shell gets from `eval` of the lines."""
    script = "\n".join(lines) + '\nfor n in "$@"; do printenv "$n"; printf "\\0"; done'
    done = subprocess.run(
        ["sh", "-c", script, "sh", *names],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    values = [value.removesuffix("\n") for value in done.stdout.split("\0")[:-1]]
    return dict(zip(names, values, strict=True))


def test_export_lines_survive_a_shell() -> None:
    env = {"PLAIN": "localhost:9092", "AWKWARD": AWKWARD, "EMPTY": "", "NEWLINE": "a\nb"}
    lines = export_lines(env)
    assert lines[0] == "export PLAIN=localhost:9092"  # nothing quoted that needs none
    assert all(line.startswith("export ") for line in lines)
    assert shell_eval(lines, list(env)) == env


@pytest.fixture
def stack_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stack directory with a space in its path, and credentials with an awkward password."""
    directory = tmp_path / "my stack"
    secure = directory / "secure"
    secure.mkdir(parents=True)
    (secure / "credentials.json").write_text(
        json.dumps({"username": "rpcache", "password": AWKWARD})
    )
    for name in ("STACK_DIR", "KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STACK_DIR", str(directory))
    get_settings.cache_clear()
    yield directory
    get_settings.cache_clear()


def test_stack_env_secure(stack_dir: Path) -> None:
    result = CliRunner().invoke(stack_app, ["env", "--secure"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    names = [line.split("=", 1)[0].removeprefix("export ") for line in lines]
    assert names == [
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CAFILE",
        "REDIS_URL",
        "REDIS_SSL_CA_CERTS",
        "DATABASE_URL",
    ]
    env = shell_eval(lines, names)
    assert env == secure_env(get_settings())
    ca = str(stack_dir / "tls" / "ca.pem")
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "localhost:9094"
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-256"
    assert env["KAFKA_SASL_USERNAME"] == "rpcache"
    assert env["KAFKA_SASL_PASSWORD"] == AWKWARD
    assert env["KAFKA_SSL_CAFILE"] == env["REDIS_SSL_CA_CERTS"] == ca

    redis = urlsplit(env["REDIS_URL"])
    assert (redis.scheme, redis.hostname, redis.port, redis.path) == (
        "rediss",
        "localhost",
        6380,
        "/0",
    )
    assert (unquote(redis.username or ""), unquote(redis.password or "")) == ("rpcache", AWKWARD)

    database = urlsplit(env["DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port) == ("postgresql", "localhost", 5432)
    assert database.path == "/rpcache"
    assert unquote(database.password or "") == AWKWARD
    assert parse_qs(database.query) == {"sslmode": ["verify-full"], "sslrootcert": [ca]}


def test_stack_env_plain(stack_dir: Path) -> None:
    result = CliRunner().invoke(stack_app, ["env"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=localhost:9092",
        "export REDIS_URL=redis://localhost:6379/0",
        "export DATABASE_URL=postgresql://postgres@localhost:5432/rpcache",
    ]


def test_stack_env_secure_without_a_secure_stack(stack_dir: Path) -> None:
    (stack_dir / "secure" / "credentials.json").unlink()
    result = CliRunner().invoke(stack_app, ["env", "--secure"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "rpcache stack up --secure" in result.stderr


def test_credentials_made_once_private(tmp_path: Path) -> None:
    settings = Settings(stack_dir=str(tmp_path))
    first = ensure_credentials(settings)
    assert ensure_credentials(settings) == first
    assert first.username == "rpcache" and len(first.password) >= 32
    assert first.password not in repr(first)
    path = tmp_path / "secure" / "credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secure").stat().st_mode & 0o777 == 0o700


def test_postgres_verifier() -> None:
    verifier = postgres_scram_verifier("secret")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert postgres_verifier_matches(verifier, "secret")
    assert not postgres_verifier_matches(verifier, "Secret")
    assert not postgres_verifier_matches("md5abc", "secret")
    assert not postgres_verifier_matches(None, "secret")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_certificates(tmp_path: Path) -> None:
    settings = Settings(stack_dir=str(tmp_path))
    paths = tls_paths(settings)
    assert ensure_tls(settings)  # made
    assert ensure_tls(settings) == []  # kept
    for key in (paths.ca_key, paths.server_key, paths.server_keystore):
        assert key.stat().st_mode & 0o777 == 0o600, key
    assert "BEGIN PRIVATE KEY" in paths.server_key.read_text()  # PKCS#8, as Kafka wants
    assert paths.server_cert.read_text() in paths.server_keystore.read_text()
    text = subprocess.run(
        ["openssl", "x509", "-in", str(paths.server_cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text

    trusting = ssl.create_default_context(cafile=str(paths.ca))
    assert len(trusting.get_ca_certs()) == 1
    untrusted = paths.untrusted_ca.read_text()
    assert untrusted != paths.ca.read_text()

    # A missing server certificate is made again, signed by the same CA.
    ca_before = paths.ca.read_text()
    paths.server_cert.unlink()
    assert ensure_tls(settings)
    assert paths.ca.read_text() == ca_before
    subprocess.run(
        ["openssl", "verify", "-CAfile", str(paths.ca), str(paths.server_cert)],
        capture_output=True,
        check=True,
    )
    assert paths.untrusted_ca.read_text() == untrusted
