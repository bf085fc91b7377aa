"""`rpcache replay`: rebuild Redis from PostgreSQL, gradually if asked.

Every key is recomputed with the worker's own projections and written with
its absolute expiry, so a key gets exactly its remaining TTL, keys whose TTL
has run out are not recreated, and running replay twice (or while the worker
is live) leaves the same state as running it once. The automatic rebuild
after Redis data loss runs the same code.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import asyncpg
from aiolimiter import AsyncLimiter
from redis.asyncio import Redis
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from streams.read.recompute import CHUNK, KEY_KINDS, KeyFilter, kind_chunks
from streams.redis_targets import KEY_FAMILIES, REPLAY_KINDS, RedisTargets, as_targets
from streams.retry import until_done
from streams.settings import Settings
from streams.sinks import redis as redis_sink

log = logging.getLogger(__name__)


@dataclass
class ReplaySummary:
    written: Counter[str] = field(default_factory=Counter)
    expired: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self) -> str:
        per = ", ".join(
            f"{k}: {self.written[k]} written, {self.expired[k]} expired"
            for k in KEY_KINDS
            if k in self.written or k in self.expired
        )
        return f"replay done in {self.seconds:.1f} s ({per or 'nothing to do'})"


def parse_kinds(families: str | None, kinds: str | None = None) -> list[str]:
    """The kinds of keys to replay, in replay order (`KEY_KINDS`).

    `families`: comma-separated key families of SPEC §8 (`sessions,ai,voice`),
    each meaning all its kinds (`REPLAY_KINDS`); `kinds`: comma-separated kinds
    (`stats,sessions,users,metrics,ai,voice`). Both None or "all" → every kind;
    both given → the kinds in either. Raises ValueError naming what is unknown.
    """
    wanted: set[str] = set()
    if families is not None and families != "all":
        chosen = _names(families, "--family")
        if unknown := chosen - set(KEY_FAMILIES):
            raise ValueError(
                f"unknown families {sorted(unknown)}; choose from {', '.join(KEY_FAMILIES)}"
                + _kind_hint(unknown)
            )
        wanted |= {k for f in KEY_FAMILIES if f in chosen for k in REPLAY_KINDS[f]}
    if kinds is not None and kinds != "all":
        chosen = _names(kinds, "--kind")
        if unknown := chosen - set(KEY_KINDS):
            raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KEY_KINDS)}")
        wanted |= chosen
    if not wanted:
        return list(KEY_KINDS)
    return [k for k in KEY_KINDS if k in wanted]


def _names(text: str, option: str) -> set[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    if not names:  # "," or "" would otherwise fall back to every kind
        raise ValueError(f"{option} {text!r} names nothing; leave it out for all")
    return names


def _kind_hint(unknown: set[str]) -> str:
    """Before the rename, `--family` took kinds; say where they went."""
    moved = sorted(unknown & set(KEY_KINDS))
    return f" ({', '.join(moved)}: a kind of key, use --kind)" if moved else ""


RATE_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
"""The per-unit forms `--rate` takes: keys per second, minute or hour."""


def parse_rate(text: str | None) -> float | None:
    """`500/s` or `500` → 500.0 keys per second, `30/m` → 0.5, `2/h`; None → unlimited.

    Raises ValueError for any other form or a rate that is not positive."""
    if not text:
        return None
    number, slash, unit = text.strip().partition("/")
    try:
        value = float(number) / RATE_UNITS[unit if slash else "s"]
    except (ValueError, KeyError):
        raise ValueError(f"rate {text!r}: write it as 500/s, 30/m or 2/h") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"rate {text!r} must be a positive number of keys")
    return value


async def replay(
    pool: asyncpg.Pool,
    redis: Redis | RedisTargets,
    settings: Settings,
    kinds: Iterable[str] = KEY_KINDS,
    since: datetime | None = None,
    rate: float | None = None,
    show_progress: bool | None = None,
    keep: KeyFilter | None = None,
) -> ReplaySummary:
    """Write every live key of `kinds` to Redis; `rate` caps keys per second (keys
    written).

    `redis`: the targets of every key family (SPEC §8; each key goes to its
    family's), or one client for all of them. `keep`: only the SPEC §4 keys it
    accepts are written and counted (the automatic rebuild of one master of a
    cluster: the keys whose stored key hashes to that master's slots); the
    others are read from PostgreSQL and skipped.
    """
    targets = as_targets(redis)
    summary = ReplaySummary()
    started = time.monotonic()
    limiter = AsyncLimiter(max(rate, 1), 1) if rate else None
    progress = _progress(show_progress)
    with progress:
        for kind in kinds:
            task = progress.add_task(kind, total=None)
            now = datetime.now(UTC)
            async for chunk in kind_chunks(pool, settings, kind, since, now, keep):
                for start in range(0, len(chunk.ops), _step(rate)):
                    ops = chunk.ops[start : start + _step(rate)]
                    count = len(ops)  # a failed try cuts `ops` to what did not land
                    if limiter is not None:
                        await limiter.acquire(count)
                    await until_done(
                        lambda ops=ops: redis_sink.write_rewriting(targets, ops),  # type: ignore[misc]
                        max_backoff_s=settings.retry_max_backoff_s,
                    )
                    summary.written[kind] += count
                    progress.advance(task, count)
                summary.expired[kind] += chunk.expired
            progress.update(task, total=summary.written[kind])
            log.info(
                "replay %s: %d keys written, %d expired not recreated",
                kind, summary.written[kind], summary.expired[kind],
            )  # fmt: skip
    summary.seconds = time.monotonic() - started
    return summary


def _step(rate: float | None) -> int:
    """Keys per Redis pipeline: whole chunks, or less than one second's worth."""
    return CHUNK if rate is None else max(1, min(CHUNK, int(rate)))


class _Quiet:
    """Progress stand-in when not on a terminal: the log lines say it all."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> TaskID:
        return TaskID(0)

    def advance(self, task: TaskID, advance: float) -> None:
        return None

    def update(self, task: TaskID, total: float | None = None) -> None:
        return None


def _progress(show: bool | None) -> Progress | _Quiet:
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        return _Quiet()
    return Progress(
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
