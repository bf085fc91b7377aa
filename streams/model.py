"""The current state of sessions and users, as PostgreSQL keeps it.

Plain dataclasses: the reducers change them, the PostgreSQL sink loads and
saves them, the projections turn them into Redis values. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

SessionStatus = Literal["active", "paused", "ended", "expired"]
OPEN_STATUSES: frozenset[str] = frozenset({"active", "paused"})


@dataclass(slots=True)
class SessionState:
    session_id: str
    user_id: str
    status: SessionStatus
    speaker_id: int
    scenario_id: str | None
    conversation_context: dict[str, Any] | None
    performance_stats: dict[str, Any] | None
    started_at: datetime
    business_day: date
    last_activity: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    version: int = 1

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(slots=True)
class UserState:
    user_id: str
    current_session_id: str | None
    last_login: datetime | None
    preferences: dict[str, Any] | None
    last_seen: datetime
    version: int = 1
