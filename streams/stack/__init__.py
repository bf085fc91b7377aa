"""The local Kafka, Redis and PostgreSQL of the demo and the tests (`rpcache stack`).

Why it exists: the integration and chaos tests need the real servers, on a
machine with no Docker engine. `up` reuses any server that already answers at
the configured address and otherwise starts one of our own on 127.0.0.1, the
three in parallel; `down` stops only what `up` started.

The functions are synchronous and safe to call from inside a running event
loop, so tests can really stop, kill and restart a server:

    from streams.stack import kill_service, start_service
    kill_service("redis")      # SIGKILL, as a crash
    start_service("redis")     # back, healthy when this returns
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

from streams.settings import Settings, get_settings
from streams.stack.common import Address, Outcome, Service, StackError
from streams.stack.kafka import KAFKA_VERSION, KafkaServer
from streams.stack.postgres import PostgresServer
from streams.stack.redis_server import RedisServer

__all__ = [
    "KAFKA_VERSION",
    "SERVICE_NAMES",
    "Outcome",
    "ServiceName",
    "ServiceStatus",
    "StackError",
    "down",
    "get_service",
    "kill_service",
    "start_service",
    "status",
    "stop_service",
    "up",
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
