"""`rpcache`: the one command-line entry point (SPEC §7).

rpcache stack up        start Kafka, Redis and PostgreSQL on 127.0.0.1
rpcache worker          run the stream processor (Faust)
rpcache demo            simulated roleplay traffic end to end, with a summary
rpcache replay          rebuild Redis from PostgreSQL (all or some families or kinds, rate-limited)
rpcache warmup          load the most used entries into Redis
rpcache check           exit 0 when the worker's heartbeat is fresh and its dependencies answer
rpcache bench           throughput, freshness, reads and memory against the local stack
rpcache schemas         write the JSON Schema of every message on the topics (for analysts)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from streams.tools.stack.cli import stack_app

if TYPE_CHECKING:
    from streams.read.replay import ReplaySummary

cli = typer.Typer(
    help="rpcache: Kafka → Faust → Redis + PostgreSQL cache for voice role-play.",
    no_args_is_help=True,
    add_completion=False,
)
cli.add_typer(
    stack_app, name="stack", help="Start, stop and show the local Kafka/Redis/PostgreSQL."
)


@cli.command()
def worker(
    loglevel: str = typer.Option("info", "--loglevel", "-l", help="debug, info, warn, error, crit"),
    processes: int | None = typer.Option(
        None,
        "--processes",
        "-p",
        min=1,
        help="Worker processes in one consumer group, one core each"
        " (default: WORKER_PROCESSES, 1). Each gets WORKER_ID-i and WORKER_WEB_PORT+i.",
    ),
) -> None:
    """Run the stream processor: the same as `faust -A streams.app worker`.

    Consumes the session, inference and synthesis topics, persists to
    PostgreSQL, projects to Redis. Stops cleanly on SIGTERM or Ctrl-C.
    With --processes N, runs N such workers and stops them all when one exits.
    """
    from streams.settings import get_settings

    settings = get_settings()
    count = processes or settings.worker_processes
    if count > 1:
        from streams.worker import supervisor

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
        raise typer.Exit(
            supervisor.run_processes(
                count,
                supervisor.worker_command(loglevel),
                settings.worker_id,
                settings.worker_web_port,
            )
        )
    from streams.worker.supervisor import SUPERVISOR_PID_ENV, watch_parent

    if parent := os.environ.get(SUPERVISOR_PID_ENV):  # a child of `--processes`
        watch_parent(int(parent))  # stops when the supervisor is gone
    if settings.worker_loop == "uvloop":
        import mode.loop

        # Before Faust is imported: its consumer thread gets a uvloop loop too.
        mode.loop.use("uvloop")
    from streams.app import app, settings

    # Faust's own CLI flags override the app's settings, so pass ours through.
    web = (
        ["--web-port", str(settings.worker_web_port), "--web-bind", settings.worker_web_bind]
        if settings.worker_web_enabled
        else ["--without-web"]
    )
    sys.argv = ["rpcache", "worker", "--loglevel", loglevel, *web]
    app.main()


@cli.command()
def demo(
    users: int = typer.Option(30, help="Concurrent simulated users (the design's phase 3)."),
    sessions_per_user: int = typer.Option(3, help="Sessions each user starts."),
    events_per_session: int = typer.Option(8, help="Conversation turns per session."),
    timeout_s: float = typer.Option(120.0, help="Give up waiting for the worker after this."),
) -> None:
    """Simulated roleplay traffic through the whole pipeline, then a summary.

    Starts a worker in a child process, publishes the traffic with
    EventPublisher, waits until PostgreSQL and Redis hold all of it, prints
    what landed where, and stops the worker. Run `rpcache stack up` first.
    """
    from streams.tools.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader moves on new topics
    code = asyncio.run(run_demo(users, sessions_per_user, events_per_session, timeout_s))
    raise typer.Exit(code)


@cli.command()
def replay(
    family: str = typer.Option(
        "all",
        "--family",
        "-f",
        help="Comma-separated key families (SPEC §8): sessions,ai,voice (or all)."
        " With --kind too: the kinds of either.",
    ),
    kind: str | None = typer.Option(
        None,
        "--kind",
        "-k",
        help="Comma-separated kinds of keys: stats,sessions,users,metrics,ai,voice."
        " With --family too: the kinds of either.",
    ),
    since: str | None = typer.Option(
        None, help="Only entries active since this RFC 3339 time, e.g. 2025-01-30T09:00:00Z."
    ),
    rate: str | None = typer.Option(
        None,
        help="Keys per second, minute or hour (500/s, 30/m, 2/h) for a gradual rebuild"
        " (default: unlimited).",
    ),
) -> None:
    """Rebuild Redis keys from PostgreSQL (the source of truth).

    Each key gets its remaining TTL; keys whose TTL has run out are not
    recreated. Idempotent: a second run, or a run while the worker is live,
    leaves the same state. Shows a progress bar on a terminal, log lines
    otherwise, and a summary at the end.
    """
    from schemas.events import parse_rfc3339
    from streams.read.replay import parse_kinds, parse_rate

    try:
        kinds, per_s = parse_kinds(family, kind), parse_rate(rate)
        since_at = parse_rfc3339(since) if since else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = asyncio.run(_replay(kinds, since_at, per_s))
    _print_summary(summary)


async def _replay(kinds: list[str], since: datetime | None, rate: float | None) -> ReplaySummary:
    from streams.read.replay import replay as run
    from streams.settings import get_settings
    from streams.worker.runtime import open_pool, open_targets

    settings = get_settings()
    pool = await open_pool(settings)
    targets = open_targets(settings)  # each key to its family's Redis (SPEC §8)
    try:
        return await run(pool, targets, settings, kinds, since, rate)
    finally:
        await targets.aclose()
        await pool.close()


def _print_summary(summary: ReplaySummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"replay: {summary.seconds:.1f} s")
    for column in ("kind", "keys written", "skipped (expired)"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for name in sorted(set(summary.written) | set(summary.expired)):
        table.add_row(name, str(summary.written[name]), str(summary.expired[name]))
    Console().print(table)


@cli.command()
def warmup(
    top: int | None = typer.Option(None, min=1, help="Entries per family (default: WARMUP_TOP_N)."),
) -> None:
    """Load the most used AI responses, voice clips and scenario contexts into Redis.

    Ranked by use count in PostgreSQL; each gets its family's full TTL.
    """
    from streams.settings import get_settings

    settings = get_settings()
    loaded = asyncio.run(_warmup(settings.warmup_top_n if top is None else top))
    typer.echo(", ".join(f"{name}: {n}" for name, n in sorted(loaded.items())))


async def _warmup(top: int) -> Counter[str]:
    from streams.read.warmup import warmup as run
    from streams.settings import get_settings
    from streams.worker.runtime import open_pool, open_targets

    settings = get_settings()
    pool = await open_pool(settings)
    targets = open_targets(settings)  # each key to its family's Redis (SPEC §8)
    try:
        return await run(pool, targets, top)
    finally:
        await targets.aclose()
        await pool.close()


@cli.command()
def check(
    max_age: float | None = typer.Option(
        None, "--max-age", help="Seconds a heartbeat stays fresh (default: HEARTBEAT_MAX_AGE_S)."
    ),
    worker_id: str | None = typer.Option(
        None, "--worker-id", help="Whose heartbeat (default: WORKER_ID, the host name)."
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=1,
        help="The worker runs with --processes N: check WORKER_ID-0 … WORKER_ID-(N-1)"
        " (default: WORKER_PROCESSES).",
    ),
) -> None:
    """Health check: the worker's heartbeat is fresh and Kafka, Redis, PostgreSQL answer.

    Exits 0 when all pass, 1 otherwise; one line per check says why. Used as
    the worker's healthcheck in docker-compose.yml.
    """
    from streams.observe.check import run_checks
    from streams.settings import get_settings

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the kafka line says it
    settings = get_settings()
    if processes is not None:
        settings = settings.model_copy(update={"worker_processes": processes})
    results = asyncio.run(run_checks(settings, worker_id, max_age))
    for result in results:
        typer.echo(result.line())
    failed = [r.name for r in results if not r.ok]
    if failed:
        typer.echo(f"unhealthy: {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@cli.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="About a minute: smaller sizes, 2 rates."),
    output: Path = typer.Option(Path("bench.json"), "--output", "-o", help="Where the JSON goes."),
    only: str = typer.Option(
        "all",
        help="Comma-separated phases: throughput,freshness,memory,reads,sink (or all).",
    ),
    redis_db: int = typer.Option(
        5, help="First of the three Redis databases the run uses (emptied before and after)."
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=1,
        help="Worker processes of the second throughput run (default: one per core, at most"
        " 4; 1 skips it).",
    ),
) -> None:
    """Benchmark against the local stack: throughput beside a hand-written baseline
    and the consume-only ceiling, freshness, read latency, memory, the Redis sink.

    Each benchmark gets its own database, Redis db and topics, dropped at the
    end. The throughput and read runs are repeated on the local Redis Cluster
    (design layout; started for the run if it is not up, stopped after).
    Prints the tables and writes the same figures to bench.json.
    """
    from streams.tools.bench.main import parse_phases, run_bench

    try:
        phases = parse_phases(only)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(run_bench(quick, output, phases, redis_db, None, processes))


@cli.command("schemas")
def schemas_command(
    out: Path = typer.Option(
        Path("schemas/json"),
        "--out",
        "-o",
        help="Directory to write into, created if missing. The default, ./schemas/json, is"
        " where a checkout keeps the committed copies: run it from the checkout's root.",
    ),
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 when the files in --out differ."
    ),
) -> None:
    """Write the JSON Schema (draft 2020-12) of every message on rpcache's topics.

    One file per event type (e.g. session.started.schema.json), plus
    dead-letter.schema.json and alert.schema.json, generated from the models
    the worker validates and publishes with. The same files are installed
    with the package (the `schemas/json` directory beside schemas/events.py).
    """
    from schemas.published import drift, write

    if check:
        problems = drift(out)
        for problem in problems:
            typer.echo(f"{out / problem}", err=True)
        if problems:
            typer.echo("schemas drifted from the models: run `rpcache schemas`", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out}: up to date")
        return
    for path in write(out):
        typer.echo(str(path))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
