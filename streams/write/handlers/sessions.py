"""The session-events handler: sessions, user state and the session counters of the stats.

Inside the batch's unit of work (`streams.store.base.Tx`, one transaction): lock
the rows the batch touches, reduce the new events (pure), save the changed rows
and counters, then read back everything needed to project absolute Redis values.
The stats hash itself is written by the leader's stats timer
(streams/write/handlers/stats.py).
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
from streams.store.base import StoredEvent, Tx
from streams.store.postgres import Connection
from streams.store.postgres_store import as_tx
from streams.write.handlers.base import HandlerResult


class SessionHandler:
    topic_suffix = SESSION_TOPIC

    def __init__(self, tz: ZoneInfo, quota: int) -> None:
        self.tz = tz
        self.quota = quota

    async def apply(
        self, tx: Tx, new: list[StoredEvent], batch: list[StoredEvent], now: datetime
    ) -> HandlerResult:
        events: list[SessionEvent] = [s.event for s in batch]  # type: ignore[misc]
        session_ids = {e.session_id for e in events if isinstance(e, SessionScoped)}
        user_ids = {e.user_id for e in events}
        sessions = await tx.lock_sessions(session_ids)
        users = await tx.lock_users(user_ids)
        new_events: list[SessionEvent] = [s.event for s in new]  # type: ignore[misc]
        sessions |= await self._current_sessions(tx, new_events, users, sessions)
        changes = reduce_session_events(new_events, sessions, users, self.tz)
        await self._save(tx, changes)
        by_id = {s.event.event_id: s for s in new}
        result = HandlerResult(
            rejections=[(by_id[e.event_id], r) for e, r in changes.rejections],
        )
        result.redis_ops = await self.project(
            tx,
            [changes.sessions[s] for s in session_ids if s in changes.sessions],
            [changes.users[u] for u in user_ids],
            now,
        )
        return result

    @staticmethod
    async def _current_sessions(
        tx: Tx,
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
        return await tx.load_sessions(wanted) if wanted else {}

    async def sweep(self, tx: Tx | Connection, now: datetime, limit: int = 1000) -> list[RedisOp]:
        """Expire sessions idle for SESSION_TTL; return the Redis writes to make.

        `tx`: a unit of work, or a PostgreSQL connection inside a transaction.
        """
        tx = as_tx(tx)
        idle = await tx.lock_idle_sessions(now - SESSION_TTL, limit)
        users = await tx.lock_users({s.user_id for s in idle.values()})
        changes = expire_idle(idle, users, now)
        await self._save(tx, changes)
        return await self.project(
            tx,
            list(changes.sessions.values()),
            [changes.users[u] for u in changes.dirty_users],
            now,
        )

    async def project(
        self,
        tx: Tx,
        sessions: Iterable[SessionState],
        users: Iterable[UserState],
        now: datetime,
    ) -> list[RedisOp]:
        """Absolute Redis values for these sessions and users."""
        ops: list[RedisOp] = [project_session(s, now) for s in sessions]
        user_list = list(users)
        started = await tx.user_day_started({user_day(u, self.tz) for u in user_list})
        for user in user_list:
            count = started.get(user_day(user, self.tz), 0)
            ops.append(project_user(user, count, self.quota, now))
        return ops

    @staticmethod
    async def _save(tx: Tx, changes: SessionChanges) -> None:
        await tx.save_sessions([changes.sessions[s] for s in sorted(changes.dirty_sessions)])
        await tx.save_users([changes.users[u] for u in sorted(changes.dirty_users)])
        await tx.add_user_day_started(changes.user_day_started)
        await tx.add_day_counters(changes.day_counters)
