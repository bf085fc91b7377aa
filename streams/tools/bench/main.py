"""The body of `rpcache bench` (streams/cli.py only parses the options)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import orjson
from rich.console import Console

from streams.settings import get_settings
from streams.tools.bench.report import tables
from streams.tools.bench.runner import FULL, PHASES, QUICK, Bench


def parse_phases(text: str) -> tuple[str, ...]:
    """`all` or a comma-separated subset of PHASES, in run order."""
    if text.strip() == "all":
        return PHASES
    wanted = {p.strip() for p in text.split(",") if p.strip()}
    unknown = wanted - set(PHASES)
    if unknown or not wanted:
        raise ValueError(f"phases are some of {', '.join(PHASES)}; got {text!r}")
    return tuple(p for p in PHASES if p in wanted)


def client_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: what a roleplay service under uvicorn runs its reads on."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


def run_bench(
    quick: bool,
    output: Path,
    phases: tuple[str, ...],
    redis_db: int,
    loop: str | None,
    processes: int | None = None,
) -> int:
    """Run, print the tables, write the JSON; 0 when every measured part ran."""
    console = Console()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # leader moves on new topics
    # Past its read budget the reader falls back to PostgreSQL and says so per breaker
    # opening; the reads table shows the share each source served instead.
    logging.getLogger("streams.read.reader").setLevel(logging.ERROR)
    config = QUICK if quick else FULL
    bench = Bench(
        get_settings(),
        config,
        redis_db=redis_db,
        progress=lambda text: console.print(f"[dim]{text}…[/]", highlight=False),
        loop=loop,
        processes=processes,
    )
    bench.results.machine["client_loop"] = "uvloop" if client_loop() else "asyncio"
    console.print(f"[bold]rpcache bench[/] {config.mode}, run {bench.run}; logs in {bench.logs}")
    with asyncio.Runner(loop_factory=client_loop()) as runner:
        report = runner.run(bench.run_all(phases))
    for table in tables(report):
        console.print(table)
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    console.print(f"wrote {output}")
    return 0
