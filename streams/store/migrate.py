"""Apply the SQL migrations in `schemas/migrations` once, in order, on start.

Workers, replay and tests all call `migrate()`; an advisory lock makes
concurrent starts safe and `schema_migrations` remembers what was applied.
"""

from __future__ import annotations

import logging
from importlib import resources

from streams.store.postgres import Connection

log = logging.getLogger(__name__)
_LOCK_ID = 0x72706361  # "rpca"


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, sorted by name."""
    folder = resources.files("schemas") / "migrations"
    files = sorted(
        (p.name, p.read_text("utf-8")) for p in folder.iterdir() if p.name.endswith(".sql")
    )
    return files


async def migrate(conn: Connection) -> list[str]:
    """Apply pending migrations; return the names applied now."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied_now.append(name)
            log.info("applied migration %s", name)
    return applied_now
