"""`rpcache`: the one command-line entry point (SPEC §7).

rpcache stack up        start Kafka, Redis and PostgreSQL on 127.0.0.1
rpcache worker          run the stream processor (Faust)
rpcache demo            simulated roleplay traffic end to end, with a summary
"""

from __future__ import annotations

import asyncio
import logging
import sys

import typer

from streams.stack.cli import stack_app

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
) -> None:
    """Run the stream processor: the same as `faust -A streams.app worker`.

    Consumes the session, inference and synthesis topics, persists to
    PostgreSQL, projects to Redis. Stops cleanly on SIGTERM or Ctrl-C.
    """
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
    from streams.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader moves on new topics
    code = asyncio.run(run_demo(users, sessions_per_user, events_per_session, timeout_s))
    raise typer.Exit(code)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
