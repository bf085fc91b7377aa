"""How every rpcache connection to PostgreSQL is opened: directly or through a pooler.

A pooler in transaction mode (pgbouncer `pool_mode = transaction`, and the
poolers that work like it) lends a server connection to a client for one
transaction only; the next transaction of the same client may run on another
server connection. Everything that lives in a server session is then shared
by strangers or lost between two statements. What rpcache keeps there, and
what `DATABASE_POOLER=transaction` does about it:

- asyncpg's prepared statements. By default each connection caches named
  statements (`__asyncpg_stmt_1__`, …): a second client lent the same server
  connection prepares the same name and fails with
  `DuplicatePreparedStatementError`, or finds its statement missing on another
  server connection. `statement_cache_size=0` makes asyncpg use the unnamed
  statement and send Parse again with every Bind, in the same round trip: each
  query is self-contained (`executemany` included). The price is PostgreSQL
  parsing and planning every statement again, per batch, not per event.
- Session settings, advisory locks, LISTEN, temporary tables: rpcache uses
  none. The migrations take a transaction-level advisory lock
  (`pg_advisory_xact_lock`) and run in one transaction (streams/store/migrate.py);
  every write path is one transaction. Types asyncpg would have to introspect
  (it turns `jit` off for the session meanwhile) are not used either: every
  column is of a built-in type.
- The pool's reset on release (`pg_advisory_unlock_all(); CLOSE ALL;
  UNLISTEN *; RESET ALL`) would run on whichever server connection the
  pooler lends at that moment, resetting nothing of ours, for one more round
  trip per use: pools skip it (`pool_options`). A transaction left open is
  still rolled back, as asyncpg always does.

With `DATABASE_POOLER=none` (the default) nothing changes: asyncpg's statement
cache saves a Parse per query on a direct connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypedDict

import asyncpg

from streams.settings import Settings


class AsyncpgOptions(TypedDict, total=False):
    statement_cache_size: int


class PoolOptions(AsyncpgOptions, total=False):
    reset: Callable[[asyncpg.Connection[asyncpg.Record]], Awaitable[None]]


def asyncpg_options(settings: Settings) -> AsyncpgOptions:
    """Keyword arguments for `asyncpg.connect` (DATABASE_POOLER)."""
    if settings.database_pooler == "transaction":
        return {"statement_cache_size": 0}
    return {}


def pool_options(settings: Settings) -> PoolOptions:
    """Keyword arguments for `asyncpg.create_pool` (DATABASE_POOLER)."""
    if settings.database_pooler == "transaction":
        return {"statement_cache_size": 0, "reset": _no_session_reset}
    return {}


async def _no_session_reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Behind a transaction pooler the session is not this client's: nothing to reset."""
