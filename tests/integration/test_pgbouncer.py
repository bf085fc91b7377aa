"""The worker behind a real pgbouncer in transaction mode (DATABASE_POOLER=transaction).

pgbouncer comes from Debian's package (`make setup` installs it). The test
starts one on a free port of 127.0.0.1 in front of the stack's PostgreSQL,
`pool_mode = transaction`, `default_pool_size = 2`, and runs `rpcache worker
--processes 2` through it: the configuration that crash-looped on
`DuplicatePreparedStatementError` while asyncpg cached named statements.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from schemas.keys import ai_response_key, session_key, voice_key
from streams.observe import heartbeat
from streams.observe.heartbeat import Heartbeat
from tests import needs
from tests.integration.conftest import (
    LOG_DIR,
    RUN,
    eventually,
    isolated_run,
    rpcache_check,
    stored_count,
)

pytestmark = pytest.mark.integration
READY = "[^Worker]: Ready"
EVENTS_PER_FAMILY = 150
HINT = "pgbouncer not found: `make setup` installs it (Debian: apt-get install pgbouncer)"


def pgbouncer_binary() -> str | None:
    """On PATH, or in /usr/sbin (Debian's place, not on a normal user's PATH)."""
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgBouncer:
    port: int
    user: str
    password: str | None
    log_path: Path

    def url(self, database: str) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    """pgbouncer in transaction mode, 2 server connections per database, before the stack's
    PostgreSQL (which trusts local connections; a password in DATABASE_URL is passed on)."""
    binary = pgbouncer_binary()
    if binary is None:
        needs.missing(HINT)
    from streams.settings import get_settings

    server = urlsplit(get_settings().database_url.get_secret_value())
    user = server.username or "postgres"
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="rpcache-pgbouncer-"))
    directory.chmod(0o755)  # read by the `postgres` user when we run as root
    (directory / "users.txt").write_text(f'"{user}" "{server.password or ""}"\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\n"
        "default_pool_size = 2\n"
        "max_client_conn = 200\n" + ("user = postgres\n" if os.geteuid() == 0 else "")
        # pgbouncer refuses to run as root; as root it switches to this user.
    )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{RUN}-pgbouncer-server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [binary, str(directory / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"pgbouncer exited:\n{log_path.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"pgbouncer not listening:\n{log_path.read_text()}"
                    ) from None
                time.sleep(0.1)
        yield PgBouncer(port, user, server.password, log_path)
    finally:
        proc.send_signal(signal.SIGTERM)  # immediate shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _direct_url(database: str) -> str:
    from streams.settings import get_settings

    parts = urlsplit(get_settings().database_url.get_secret_value())
    return urlunsplit(parts._replace(path=f"/{database}"))


async def test_worker_behind_pgbouncer_in_transaction_mode(
    test_env: dict[str, str], pgbouncer: PgBouncer
) -> None:
    via_pooler = {**test_env, "DATABASE_URL": pgbouncer.url("rpcache")}
    async with isolated_run(
        via_pooler,
        "pooler",
        3,
        DATABASE_POOLER="transaction",
        WORKER_PROCESSES="2",
        WORKER_ID="pgb",
        HEARTBEAT_INTERVAL_S="1",
    ) as run:
        assert f"127.0.0.1:{pgbouncer.port}/" in run.env["DATABASE_URL"]
        await eventually(
            lambda: asyncio.sleep(0, run.worker.log_text().count(READY)),
            lambda n: n >= 2,
            timeout_s=90,
            interval_s=0.3,
        )

        async def beats() -> list[Heartbeat | None]:
            async with run.pool.acquire() as conn:
                return [await heartbeat.read(conn, run.settings.app_id, f"pgb-{i}") for i in (0, 1)]

        first = await eventually(
            beats, lambda bs: all(b is not None and not b.starting for b in bs), 30
        )

        # 150 events of each family, published concurrently (the publisher keeps call order).
        tag = uuid.uuid4().hex[:8]
        users = [f"pgb-{tag}-{i}" for i in range(EVENTS_PER_FAMILY)]
        sids = list(
            await asyncio.gather(*(run.publisher.session_started(u, speaker_id=3) for u in users))
        )
        prompts = [f"pgbouncer prompt {tag} {i}" for i in range(EVENTS_PER_FAMILY)]
        texts = [f"pgbouncer line {tag} {i}" for i in range(EVENTS_PER_FAMILY)]
        ai_ids = await asyncio.gather(
            *(
                run.publisher.ai_response(
                    u,
                    sid,
                    prompt=p,
                    response=f"answer {p}",
                    provider="p",
                    model="m",
                    latency_ms=40 + i,
                )
                for i, (u, sid, p) in enumerate(zip(users, sids, prompts, strict=True))
            )
        )
        voice_ids = await asyncio.gather(
            *(
                run.publisher.voice_synthesized(
                    u, sid, speaker_id=3, text=t, audio_b64="UklGRgAAAAA=", latency_ms=300 + i
                )
                for i, (u, sid, t) in enumerate(zip(users, sids, texts, strict=True))
            )
        )
        ids = [*ai_ids, *voice_ids]

        # Every event in PostgreSQL ...
        await eventually(lambda: stored_count(run.pool, ids), lambda n: n == len(ids), 90)
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT count(*) FROM events WHERE session_id = ANY($1::uuid[])"
                " AND type = 'session.started'",
                sids,
            ),
            lambda n: n == EVENTS_PER_FAMILY,
            60,
        )
        # ... and every key in Redis.
        keys = (
            [session_key(s) for s in sids]
            + [ai_response_key(p) for p in prompts]
            + [voice_key(3, t) for t in texts]
        )
        await eventually(lambda: run.redis.exists(*keys), lambda n: n == len(keys), 60)
        assert await run.redis.get(ai_response_key(prompts[0])) is not None
        assert await run.pool.fetchval("SELECT count(*) FROM dead_letters") == 0

        # No worker restarted: the same two processes, each started once, both alive.
        assert run.worker.proc is not None and run.worker.proc.poll() is None
        log = run.worker.log_text()
        assert log.count(READY) == 2, log[-3000:]
        assert "prepared statement" not in log.lower(), log[-3000:]
        assert "Crashed" not in log, log[-3000:]
        now = await beats()
        assert [(b.pid, b.started_at) for b in now if b] == [
            (b.pid, b.started_at) for b in first if b
        ]
        code, out = await rpcache_check(run.env)
        assert code == 0 and "all 2 processes beat" in out, out

        # Everything went through pgbouncer: at most its 2 server connections, although
        # two worker pools and the test's own were open.
        database = urlsplit(run.env["DATABASE_URL"]).path.lstrip("/")
        direct = await asyncpg.connect(_direct_url("postgres"))
        try:
            backends = await direct.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database
            )
        finally:
            await direct.close()
        assert 1 <= backends <= 2, backends
