"""A live server that cannot take writes now is waited out, never skipped or dropped.

The issue's inputs, on real servers: PostgreSQL turned read-only for a few
seconds with its backends terminated (as after a failover to a node that is
not primary yet), and Redis at maxmemory under noeviction (OOM) and refusing
writes after failed snapshots (MISCONF). Every event of the batches that met
them lands afterwards, once, and no event is dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from schemas.keys import session_key, user_state_key
from streams.settings import get_settings
from tests.integration.conftest import (
    PrivateRedis,
    _with_db,
    eventually,
    isolated_run,
)

pytestmark = pytest.mark.integration


async def _terminate_backends(admin: asyncpg.Connection, db: str) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        db,
    )


async def test_read_only_postgres_is_waited_out(test_env: dict[str, str]) -> None:
    async with isolated_run(test_env, "readonly", 7) as run:
        db = urlsplit(run.settings.database_url.get_secret_value()).path.lstrip("/")
        admin = await asyncpg.connect(
            _with_db(get_settings().database_url.get_secret_value(), "postgres")
        )
        try:
            await admin.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
            await _terminate_backends(admin, db)
            users = [f"ro-user-{i}" for i in range(6)]
            sids = [await run.publisher.session_started(u, speaker_id=1) for u in users]
            bad = {"type": "session.started", "event_id": str(uuid.uuid4())}  # no user_id
            await run.publisher.publish_raw(
                f"{run.settings.topic_prefix}session-events", b"ro-user-0", orjson.dumps(bad)
            )
            await asyncio.sleep(4)  # the worker meets the read-only database meanwhile
            assert "ReadOnlySQLTransactionError" in run.worker.log_text()
            await admin.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
            await _terminate_backends(admin, db)
        finally:
            await admin.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
            await admin.close()
        for user, sid in zip(users, sids, strict=True):
            await eventually(
                lambda u=user: run.redis.hget(user_state_key(u), "current_session_id"),  # type: ignore[misc]
                lambda v, s=sid: v == s,  # type: ignore[misc]
            )
        dead = await eventually(
            lambda: run.pool.fetch("SELECT reason FROM dead_letters"), lambda rows: len(rows) >= 1
        )
        assert [r["reason"] for r in dead] == ["invalid_fields"]  # nothing for the outage
        started = await run.pool.fetchval(
            "SELECT count(*) FROM events WHERE type = 'session.started'"
        )
        assert started == len(users)
        assert run.worker.proc is not None and run.worker.proc.poll() is None


@pytest.mark.parametrize(
    ("name", "refuse", "allow"),
    [
        # OOM: at maxmemory under noeviction, every write is refused.
        (
            "oom",
            [
                ("CONFIG", "SET", "maxmemory-policy", "noeviction"),
                ("CONFIG", "SET", "maxmemory", "1"),
            ],
            [("CONFIG", "SET", "maxmemory", "0")],
        ),
        # MISCONF: a failed RDB snapshot with stop-writes-on-bgsave-error.
        (
            "misconf",
            [("CONFIG", "SET", "save", "3600 1"), ("CONFIG", "SET", "dir", "/proc"), ("BGSAVE",)],
            [("CONFIG", "SET", "stop-writes-on-bgsave-error", "no")],
        ),
    ],
)
async def test_redis_refusing_writes_is_waited_out(
    test_env: dict[str, str],
    tmp_path: Path,
    private_redis: list[PrivateRedis],
    name: str,
    refuse: list[tuple[str, ...]],
    allow: list[tuple[str, ...]],
) -> None:
    server = PrivateRedis(tmp_path, "--enable-protected-configs", "yes")
    private_redis.append(server)
    await server.start()
    async with isolated_run(test_env, f"redis{name}", 0, REDIS_URL=server.url) as run:
        admin = server.client()
        try:
            for command in refuse:
                await admin.execute_command(*command)
            if name == "misconf":  # the snapshot fails in a child process, a moment later
                await eventually(
                    lambda: admin.info("persistence"),
                    lambda i: (
                        i["rdb_last_bgsave_status"] == "err" and not i["rdb_bgsave_in_progress"]
                    ),
                )
            users = [f"{name}-user-{i}" for i in range(5)]
            sids = [await run.publisher.session_started(u, speaker_id=2) for u in users]
            # The first batch is stored, then waits for Redis; the others queue behind it.
            await eventually(
                lambda: run.pool.fetchval("SELECT count(*) FROM events"), lambda n: n >= 1
            )
            await asyncio.sleep(2)
            assert await admin.exists(*(session_key(s) for s in sids)) == 0
            for command in allow:
                await admin.execute_command(*command)
            for sid, user in zip(sids, users, strict=True):
                await eventually(
                    lambda s=sid: admin.hget(session_key(s), "user_id"),  # type: ignore[misc]
                    lambda v, u=user: v == u,  # type: ignore[misc]
                )
            assert "transient failure" in run.worker.log_text()
            assert await run.pool.fetchval("SELECT count(*) FROM events") == 5
            assert await run.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        finally:
            await admin.aclose()
