"""`rpcache worker` runs from any directory once installed (no checkout, no `.cache/`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.keys import session_key
from tests.integration.conftest import eventually, isolated_run, stored_count

pytestmark = pytest.mark.integration


async def test_worker_starts_in_an_empty_directory(
    test_env: dict[str, str], tmp_path: Path
) -> None:
    """Working directory empty, data directory three levels deep and missing."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    data_dir = tmp_path / "state" / "rpcache" / "worker"
    async with isolated_run(test_env, "anywhere", 9, cwd=cwd, WORKER_DATA_DIR=str(data_dir)) as run:
        sid = await run.publisher.session_started("anywhere-user", speaker_id=2)
        await eventually(
            lambda: run.redis.hget(session_key(sid), "user_id"), lambda v: v == "anywhere-user"
        )
        ids = [r[0] for r in await run.pool.fetch("SELECT event_id::text FROM events")]
        assert await stored_count(run.pool, ids) == 1
    assert data_dir.is_dir()
    assert list(cwd.iterdir()) == []  # nothing written into the working directory
