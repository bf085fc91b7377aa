"""The session family: sessions, user state and the session counters of the stats.

Inside the batch transaction: lock the rows the batch touches, reduce the new
events (pure), save the changed rows and counters, then read back everything
needed to project absolute Redis values. The stats hash itself is written by
the leader's stats timer (streams/write/families/stats.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from schemas.events import SessionEvent, SessionScoped, SessionStarted
from schemas.keys import SESSION_TOPIC, SESSION_TTL
from streams.model import SessionState, UserState
from streams.projections import RedisOp, project_session, project_user, user_day
from streams.reducers.sessions import SessionChanges, expire_idle, reduce_session_events
from streams.store import postgres as pg
from streams.store.postgres import Connection, StoredEvent
from streams.write.families.base import FamilyResult


class SessionFamily:
    topic_suffix = SESSION_TOPIC

    def __init__(self, tz: ZoneInfo, quota: int) -> None:
        self.tz = tz
        self.quota = quota

    async def apply(
        self, conn: Connection, new: list[StoredEvent], batch: list[StoredEvent], now: datetime
    ) -> FamilyResult:
        events: list[SessionEvent] = [s.event for s in batch]  # type: ignore[misc]
        session_ids = {e.session_id for e in events if isinstance(e, SessionScoped)}
        user_ids = {e.user_id for e in events}
        sessions = await pg.lock_sessions(conn, session_ids)
        users = await pg.lock_users(conn, user_ids)
        new_events: list[SessionEvent] = [s.event for s in new]  # type: ignore[misc]
        sessions |= await self._current_sessions(conn, new_events, users, sessions)
        changes = reduce_session_events(new_events, sessions, users, self.tz)
        await self._save(conn, changes)
        by_id = {s.event.event_id: s for s in new}
        result = FamilyResult(
            rejections=[(by_id[e.event_id], r) for e, r in changes.rejections],
        )
        result.redis_ops = await self.project(
            conn,
            [changes.sessions[s] for s in session_ids if s in changes.sessions],
            [changes.users[u] for u in user_ids],
            now,
        )
        return result

    @staticmethod
    async def _current_sessions(
        conn: Connection,
        events: list[SessionEvent],
        users: dict[str, UserState],
        loaded: dict[str, SessionState],
    ) -> dict[str, SessionState]:
        """The current session of every user starting one, when the batch did not
        load it: the reducer compares start times (event time decides). Read
        without a lock: started_at never changes, and only this partition's
        worker starts or updates this user's sessions."""
        starters = {e.user_id for e in events if isinstance(e, SessionStarted)}
        wanted = {
            current
            for user_id in starters
            if (user := users.get(user_id)) is not None
            and (current := user.current_session_id) is not None
            and current not in loaded
        }
        return await pg.load_sessions(conn, wanted) if wanted else {}

    async def sweep(self, conn: Connection, now: datetime, limit: int = 1000) -> list[RedisOp]:
        """Expire sessions idle for SESSION_TTL; return the Redis writes to make."""
        idle = await pg.lock_idle_sessions(conn, now - SESSION_TTL, limit)
        users = await pg.lock_users(conn, {s.user_id for s in idle.values()})
        changes = expire_idle(idle, users, now)
        await self._save(conn, changes)
        return await self.project(
            conn,
            list(changes.sessions.values()),
            [changes.users[u] for u in changes.dirty_users],
            now,
        )

    async def project(
        self,
        conn: Connection,
        sessions: Iterable[SessionState],
        users: Iterable[UserState],
        now: datetime,
    ) -> list[RedisOp]:
        """Absolute Redis values for these sessions and users."""
        ops: list[RedisOp] = [project_session(s, now) for s in sessions]
        user_list = list(users)
        started = await pg.user_day_started(conn, {user_day(u, self.tz) for u in user_list})
        for user in user_list:
            count = started.get(user_day(user, self.tz), 0)
            ops.append(project_user(user, count, self.quota, now))
        return ops

    @staticmethod
    async def _save(conn: Connection, changes: SessionChanges) -> None:
        await pg.save_sessions(conn, [changes.sessions[s] for s in sorted(changes.dirty_sessions)])
        await pg.save_users(conn, [changes.users[u] for u in sorted(changes.dirty_users)])
        await pg.add_user_day_started(conn, changes.user_day_started)
        await pg.add_day_counters(conn, changes.day_counters)
