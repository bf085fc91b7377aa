"""The one voice rule against real PostgreSQL: every reader of `voice_clips` (the
pipeline's read-back, the reader's recompute, replay, warm-up) projects the
same rows, those with audio and cached_at, in a database of its own."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from schemas.keys import voice_key_for_hash
from streams.model import CachedVoiceClip
from streams.projections import Delete, StringWrite
from streams.read import recompute
from streams.read.warmup import warmup
from streams.settings import Settings, get_settings
from streams.store import caches, reads
from streams.worker.runtime import open_pool
from tests.integration.conftest import RUN, _with_db
from tests.integration.conftest import test_redis as redis_client

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
AT = NOW - timedelta(minutes=5)
SPEAKER = 7
ROWS = {  # text_hash: (audio, cached_at, use_count); the unprojectable ones most used
    "held": (b"RIFFheld", AT, 10),
    "no-cached-at": (b"RIFFlost", None, 40),
    "no-audio": (None, AT, 30),
    "neither": (None, None, 20),
}
HELD = CachedVoiceClip(SPEAKER, "held", base64.b64encode(b"RIFFheld").decode(), AT)


@pytest.fixture
async def clips(test_env: dict[str, str]) -> AsyncIterator[tuple[Settings, asyncpg.Pool]]:
    db = f"rpcache_test_{RUN}_voice_rule"
    admin_url = _with_db(get_settings().database_url.get_secret_value(), "postgres")
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    await admin.close()
    env = {**test_env, "DATABASE_URL": _with_db(test_env["DATABASE_URL"], db)}
    env["REDIS_URL"] = test_env["REDIS_URL"].rsplit("/", 1)[0] + "/6"
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    pool = await open_pool(settings)
    await pool.executemany(
        "INSERT INTO voice_clips (speaker_id, text_hash, text, audio, audio_format, cached_at,"
        " use_count, last_used_at) VALUES ($1, $2, $2, $3, 'wav', $4, $5, $6)",
        [(SPEAKER, h, audio, at, uses, AT) for h, (audio, at, uses) in ROWS.items()],
    )
    try:
        yield settings, pool
    finally:
        await pool.close()
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def test_every_reader_projects_only_clips_with_audio_and_cached_at(
    clips: tuple[Settings, asyncpg.Pool],
) -> None:
    settings, pool = clips
    keys = [(SPEAKER, h) for h in ROWS]
    async with pool.acquire() as conn:
        # one key (the reader; the pipeline when another batch's miss won)
        assert [await caches.voice_clip_of(conn, SPEAKER, h) for h in ROWS] == [
            HELD,
            None,
            None,
            None,
        ]
        # the pipeline's read-back of its misses
        sources = await caches.voice_sources(conn, keys)
        assert [(s.text_hash, s.cached_at) for s in sources] == [("held", AT)]
        # warm-up's top N counts only clips: the more used rows without one do not
        assert await caches.most_used_voice_clips(conn, 1) == [HELD]
        # the reader's fallback and read-through
        ops = {h: await recompute.voice_op(conn, SPEAKER, h, NOW) for h in ROWS}
    held = ops.pop("held")
    assert isinstance(held, StringWrite)
    assert (held.key, held.value) == (voice_key_for_hash(SPEAKER, "held"), HELD.audio_b64)
    assert ops == {h: Delete(voice_key_for_hash(SPEAKER, h)) for h in ROWS if h != "held"}
    # replay and the rebuild
    chunks = [c async for c in recompute.kind_chunks(pool, settings, "voice", None, NOW)]
    assert [op.key for c in chunks for op in c.ops] == [voice_key_for_hash(SPEAKER, "held")]
    assert sum(c.expired for c in chunks) == 0

    redis = redis_client(settings.redis_url.get_secret_value())
    try:
        await redis.flushdb()
        loaded = await warmup(pool, redis, top=1)
        assert loaded["voice"] == 1
        assert [k async for k in redis.scan_iter()] == [voice_key_for_hash(SPEAKER, "held")]
        assert await redis.get(voice_key_for_hash(SPEAKER, "held")) == HELD.audio_b64
    finally:
        await redis.flushdb()
        await redis.aclose()


async def test_nothing_to_project_holds_only_while_every_source_table_is_empty(
    clips: tuple[Settings, asyncpg.Pool],
) -> None:
    """The fresh-start rule of the data-loss marker (streams/read/rebuild.py): a row in
    any table a key comes from, not only the event log, means Redis may have lost it."""
    _, pool = clips
    async with pool.acquire() as conn:
        assert not await reads.nothing_to_project(conn)  # voice_clips rows, no event
        await conn.execute("DELETE FROM voice_clips")
        assert await reads.nothing_to_project(conn)
        for table in reads.PROJECTED_TABLES:  # every name is a table of the schema
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
