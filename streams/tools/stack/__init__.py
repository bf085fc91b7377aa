"""The local Kafka, Redis and PostgreSQL of the demo and the tests (`rpcache stack`).

Why it exists: the integration and chaos tests need the real servers, on a
machine with no Docker engine. `up` reuses any server that already answers at
the configured address and otherwise starts one of our own on 127.0.0.1, the
three in parallel; `down` stops only what `up` started.

The functions are synchronous and safe to call from inside a running event
loop, so tests can really stop, kill and restart a server:

    from streams.tools.stack import kill_service, start_service
    kill_service("redis")      # SIGKILL, as a crash
    start_service("redis")     # back, healthy when this returns

Every server also has a secure endpoint (TLS, the user `rpcache`; see
streams/tools/stack/secure.py): `verify_secure` proves they answer, `secure_env`
and `plain_env` give the settings that point rpcache at either, `tls_paths`
the certificate files (the CA clients trust, and one they must not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

from streams.settings import Settings, get_settings
from streams.tools.stack.common import Address, Outcome, SecureProbeError, Service, StackError
from streams.tools.stack.kafka import KAFKA_VERSION, KafkaServer
from streams.tools.stack.postgres import PostgresServer
from streams.tools.stack.redis_server import RedisServer
from streams.tools.stack.secure import (
    UP_SECURE,
    Credentials,
    TlsPaths,
    export_lines,
    load_credentials,
    plain_env,
    secure_env,
    tls_paths,
)

__all__ = [
    "KAFKA_VERSION",
    "SERVICE_NAMES",
    "Credentials",
    "Outcome",
    "SecureCheck",
    "SecureProbeError",
    "ServiceName",
    "ServiceStatus",
    "StackError",
    "TlsPaths",
    "down",
    "export_lines",
    "get_service",
    "kill_service",
    "load_credentials",
    "plain_env",
    "secure_env",
    "start_service",
    "status",
    "stop_service",
    "tls_paths",
    "up",
    "verify_secure",
]

ServiceName = Literal["kafka", "redis", "postgres"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("kafka", "redis", "postgres")
_CLASSES: dict[str, type[Service]] = {
    "kafka": KafkaServer,
    "redis": RedisServer,
    "postgres": PostgresServer,
}


def get_service(name: ServiceName, settings: Settings | None = None) -> Service:
    """The manager of one server, configured from the settings."""
    try:
        cls = _CLASSES[name]
    except KeyError:
        raise StackError(
            f"unknown service {name!r}; choose from {', '.join(SERVICE_NAMES)}"
        ) from None
    return cls(settings or get_settings())


def start_service(name: ServiceName) -> Outcome:
    """Start the server unless something answers already; return once it is healthy."""
    return get_service(name).ensure()


def stop_service(name: ServiceName) -> bool:
    """Stop our server gracefully; False when this stack runs none."""
    return get_service(name).stop()


def kill_service(name: ServiceName) -> bool:
    """SIGKILL our server (and its children), as a crash; False when this stack runs none."""
    return get_service(name).kill()


def up(
    names: Iterable[ServiceName] = SERVICE_NAMES,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Ensure every named server answers, in parallel; one StackError lists all failures."""
    services = [get_service(name) for name in names]
    outcomes: list[Outcome] = []
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        futures = {pool.submit(service.ensure): service.name for service in services}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except StackError as exc:
                failures.append(f"{futures[future]}: {exc}")
                continue
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    if failures:
        raise StackError("\n".join(failures))
    return outcomes


def down(names: Iterable[ServiceName] = SERVICE_NAMES) -> dict[str, bool]:
    """Stop our servers in parallel; maps each name to whether one was running."""
    services = [get_service(name) for name in names]
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        stopped = pool.map(lambda service: service.stop(), services)
        return {service.name: was for service, was in zip(services, stopped, strict=True)}


@dataclass(frozen=True)
class ServiceStatus:
    """One row of `rpcache stack status`."""

    service: str
    address: Address
    answers: bool
    pid: int | None
    log: str


def status(names: Iterable[ServiceName] = SERVICE_NAMES) -> list[ServiceStatus]:
    """Whether each server answers, and the pid when it is ours."""
    rows = []
    for name in names:
        service = get_service(name)
        pid = service.pid()
        log = str(service.log_path) if pid is not None else ""
        rows.append(ServiceStatus(name, service.address, service.answers(), pid, log))
    return rows


@dataclass(frozen=True)
class SecureCheck:
    """Whether one server's secure endpoint works (`verify_secure`)."""

    service: str
    address: Address
    what: str
    """What was proven (or tried), e.g. "SASL_SSL: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"."""
    problem: str | None
    """None when it works; else what failed and what to run."""


_SECURE_WHAT = {
    "kafka": "SASL_SSL with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
    "redis": "TLS, ACL user",
    "postgres": "TLS (verify-full), scram-sha-256",
}


def verify_secure(
    names: Iterable[ServiceName] = SERVICE_NAMES, settings: Settings | None = None
) -> list[SecureCheck]:
    """Prove each secure endpoint: a TLS handshake against the stack's CA, the credentials
    accepted. A failure says why and whether a restart of the stack cures it."""
    settings = settings or get_settings()
    services = [get_service(name, settings) for name in names]
    try:
        load_credentials(settings)
    except StackError as exc:
        return [
            SecureCheck(s.name, s.secure_address, _SECURE_WHAT[s.name], str(exc)) for s in services
        ]
    with ThreadPoolExecutor(max_workers=max(1, len(services))) as pool:
        problems = list(pool.map(lambda service: service.secure_problem(), services))
    return [
        SecureCheck(
            service.name,
            service.secure_address,
            _SECURE_WHAT[service.name],
            None if problem is None else _explain(service, problem),
        )
        for service, problem in zip(services, problems, strict=True)
    ]


def _explain(service: Service, problem: SecureProbeError) -> str:
    """The failure, and what the operator runs to get the secure endpoint."""
    detail = problem.detail.rstrip(". ")
    if service.pid() is not None:
        return (
            f"{detail}. This checkout started the server without this endpoint (an older "
            "rpcache), or before the stack's certificates or password changed: run "
            f"`rpcache stack down` then `{UP_SECURE}`"
        )
    return (
        f"{detail}. The server at {service.address} was not started by this checkout "
        "(reused), so it lacks the stack's secure endpoints: stop it, then run "
        f"`{UP_SECURE}` (`rpcache stack down` stops only the servers this checkout started)"
    )
