"""`rpcache stack up|down|status|env`: the command-line face of `streams.tools.stack`.

Mounted by `streams.cli` with `app.add_typer(stack_app, name="stack")`; it
also runs alone (`python -m streams.tools.stack.cli up`) so the Makefile and CI can
bring the servers up before the rest of the package is importable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from streams.settings import get_settings
from streams.tools.stack import (
    SERVICE_NAMES,
    Outcome,
    SecureCheck,
    ServiceName,
    StackError,
    down,
    export_lines,
    plain_env,
    secure_env,
    status,
    up,
    verify_secure,
)
from streams.tools.stack.cluster import ClusterTopology, cluster_env
from streams.tools.stack.sentinel import SentinelTopology, sentinel_env

stack_app = typer.Typer(
    help="The local Kafka, Redis and PostgreSQL used by the demo and the tests.",
    no_args_is_help=True,
)
console = Console()

ServicesArg = Annotated[
    list[str] | None,
    typer.Argument(help=f"Some of: {', '.join(SERVICE_NAMES)} (default: all).", show_default=False),
]


def _names(services: list[str] | None) -> list[ServiceName]:
    chosen = services or list(SERVICE_NAMES)
    unknown = sorted(set(chosen) - set(SERVICE_NAMES))
    if unknown:
        raise typer.BadParameter(f"unknown service(s): {', '.join(unknown)}")
    return [cast(ServiceName, name) for name in chosen]


def _fail(exc: StackError) -> typer.Exit:
    console.print(f"[bold red]stack error:[/] {exc}", highlight=False)
    return typer.Exit(code=1)


def _short(path: str) -> str:
    """A path relative to the current directory when it lies below it."""
    if not path:
        return ""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _print_outcome(outcome: Outcome) -> None:
    verb = {
        "reused": "[cyan]reusing the server that answers at[/]",
        "running": "[green]already running (ours) at[/]",
        "started": "[green]started at[/]",
    }[outcome.action]
    pid = f" pid {outcome.pid}" if outcome.pid else ""
    console.print(
        f"{outcome.service:<9} {verb} {outcome.address}{pid}  ({outcome.seconds:.1f} s)",
        highlight=False,
    )
    for note in outcome.notes:
        console.print(f"{'':<9} {note}", highlight=False)


def _print_secure(check: SecureCheck) -> None:
    if check.problem is None:
        console.print(
            f"{check.service:<9} [green]secure endpoint answers at[/] {check.address}  "
            f"({check.what})",
            highlight=False,
        )
    else:
        console.print(
            f"{check.service:<9} [bold red]secure endpoint at {check.address} fails:[/] "
            f"{check.problem}",
            highlight=False,
        )


@stack_app.command("up")
def up_command(
    services: ServicesArg = None,
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="Then prove the secure endpoints (Kafka SASL_SSL, Redis TLS + ACL user, "
            "PostgreSQL TLS): a TLS handshake against the stack's CA, the credentials "
            "accepted. `rpcache stack env --secure` prints their settings.",
        ),
    ] = False,
    redis_topology: Annotated[
        str,
        typer.Option(
            "--redis",
            help="single: one Redis (REDIS_URL). sentinel: also a master and a replica per "
            "key family (sessions, ai, voice) with the family's eviction policy, watched by "
            "three Sentinels; `rpcache stack env` then points each family at its set. "
            "cluster: also a Redis Cluster of three masters (ports 6401-6403, the design's "
            "slot ranges and policies) and three replicas (6404-6406); `rpcache stack env` "
            "then points every family at it, in the design layout.",
        ),
    ] = "single",
) -> None:
    """Start what does not answer yet (reusing what does) and wait until healthy."""
    started = time.monotonic()
    names = _names(services)
    if redis_topology not in ("single", "sentinel", "cluster"):
        raise typer.BadParameter("--redis is single, sentinel or cluster")
    try:
        up(names, on_done=_print_outcome)
        if redis_topology == "sentinel":
            topology = SentinelTopology(get_settings())
            for note in topology.up():
                console.print(f"{'redis':<9} {note}", highlight=False)
            console.print(
                f"{'redis':<9} [green]sentinel topology healthy[/]: a master and a synced "
                "replica per family, three Sentinels",
                highlight=False,
            )
        if redis_topology == "cluster":
            cluster = ClusterTopology(get_settings())
            notes = cluster.up()
            for note in notes:
                console.print(f"{'redis':<9} {note}", highlight=False)
            console.print(
                f"{'redis':<9} [green]cluster healthy[/]"
                f"{'' if notes else ' (reused, already running)'}: three masters serving "
                "0-5460, 5461-10922, 10923-16383 with the design's policies, a synced "
                "replica each",
                highlight=False,
            )
    except StackError as exc:
        raise _fail(exc) from exc
    if secure:
        checks = verify_secure(names)
        for check in checks:
            _print_secure(check)
        if any(check.problem for check in checks):
            console.print("[bold red]stack error:[/] a secure endpoint does not work (above)")
            raise typer.Exit(code=1)
    console.print(f"stack ready in {time.monotonic() - started:.1f} s")


@stack_app.command("down")
def down_command(services: ServicesArg = None) -> None:
    """Stop the servers this stack started; leave any other alone."""
    started = time.monotonic()
    names = _names(services)
    try:
        stopped = down(names)
        if "redis" in names:
            stopped["redis (sentinel topology)"] = SentinelTopology(get_settings()).down()
            stopped["redis (cluster)"] = ClusterTopology(get_settings()).down()
    except StackError as exc:
        raise _fail(exc) from exc
    for name, was_ours in stopped.items():
        console.print(f"{name:<9} {'stopped' if was_ours else 'not ours / not running'}")
    console.print(f"done in {time.monotonic() - started:.1f} s")


@stack_app.command("status")
def status_command(
    services: ServicesArg = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 unless every server answers.")
    ] = False,
) -> None:
    """Show each server's address, whether it answers, and its pid when ours."""
    rows = status(_names(services))
    table = Table("service", "address", "answers", "pid (ours)")
    table.add_column("log", overflow="fold")
    for row in rows:
        answers = "[green]yes[/]" if row.answers else "[red]no[/]"
        table.add_row(row.service, str(row.address), answers, str(row.pid or "-"), _short(row.log))
    console.print(table)
    cluster = ClusterTopology(get_settings())
    if "redis" in _names(services) and cluster.any_running():
        nodes = Table("node", "port", "role", "slots", "policy", "pid (ours)")
        nodes.title = "redis cluster (127.0.0.1)"
        for node in cluster.rows():
            role = "[red]down[/]" if node.role == "down" else node.role
            nodes.add_row(
                node.name,
                str(node.port),
                role,
                node.slots or "-",
                node.policy or "-",
                str(node.pid or "-"),
            )
        console.print(nodes)
        problem = cluster.problem()
        console.print(
            "redis cluster: [green]healthy[/]" if problem is None else f"redis cluster: {problem}",
            highlight=False,
        )
    if check and not all(row.answers for row in rows):
        raise typer.Exit(code=1)


@stack_app.command("env")
def env_command(
    secure: Annotated[
        bool,
        typer.Option(
            "--secure",
            help="The secure endpoints: Kafka SASL_SSL (SCRAM-SHA-256), Redis over TLS "
            "with the ACL user, PostgreSQL with TLS (verify-full); includes the password.",
        ),
    ] = False,
    redis_topology: Annotated[
        str,
        typer.Option(
            "--redis",
            help="auto: the sentinel topology or the cluster, whichever runs (neither: "
            "single). single: REDIS_URL only. sentinel / cluster: that topology (it must run).",
        ),
    ] = "auto",
) -> None:
    """Print `export NAME=value` lines for this stack: eval "$(rpcache stack env)".

    When the sentinel topology runs (`stack up --redis sentinel`), each key
    family's URL points at its master/replica set; when the cluster runs
    (`stack up --redis cluster`), every family's URL points at the cluster,
    with REDIS_CLUSTER_LAYOUT=design. When both run, `--redis` chooses.
    """
    if redis_topology not in ("auto", "single", "sentinel", "cluster"):
        raise typer.BadParameter("--redis is auto, single, sentinel or cluster")
    try:
        env = secure_env() if secure else plain_env()
        env |= _topology_env(redis_topology)
    except StackError as exc:
        typer.echo(f"stack error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    for line in export_lines(env):
        typer.echo(line)


def _topology_env(choice: str) -> dict[str, str]:
    """The family settings of the Redis topology `choice` (auto: the one that runs)."""
    settings = get_settings()
    running = {
        "sentinel": SentinelTopology(settings).running(),
        "cluster": ClusterTopology(settings).running(),
    }
    if choice == "auto":
        found = [name for name, up in running.items() if up]
        if len(found) > 1:
            raise StackError(
                "both the sentinel topology and the cluster run: choose with "
                "`rpcache stack env --redis sentinel` or `--redis cluster`"
            )
        choice = found[0] if found else "single"
    if choice == "single":
        return {}
    if not running[choice]:
        raise StackError(f"the {choice} topology does not run: `rpcache stack up --redis {choice}`")
    return sentinel_env() if choice == "sentinel" else cluster_env()


if __name__ == "__main__":
    stack_app()
