"""Databases of their own: the benchmark creates one per run and drops it after.

Run on a connection to another database of the server (`postgres`). The
name is ours (never input); it is quoted as an identifier.
"""

from __future__ import annotations

from streams.store.postgres import Connection


def _quoted(name: str) -> str:
    return f'"{name}"'


async def recreate_database(conn: Connection, name: str) -> None:
    """An empty database `name`, dropping any left from an earlier run (its sessions too)."""
    await drop_database(conn, name)
    await conn.execute(f"CREATE DATABASE {_quoted(name)}")


async def drop_database(conn: Connection, name: str) -> None:
    await conn.execute(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")
