"""The shared vocabulary: state of sessions and users, and what a batch did.

Plain dataclasses: the reducers change the state, the PostgreSQL store loads
and saves it, the projections turn it into Redis values; the pipeline
reports a `BatchOutcome`, which the metrics read. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

Publish = Callable[[str, bytes | None, bytes], Awaitable[None]]
"""Send (topic, key, value) to Kafka and wait until the broker has it."""

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


@dataclass
class BatchOutcome:
    """What one batch did, for logs, metrics and tests."""

    messages: int = 0
    accepted: int = 0
    new: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    redis_ops: int = 0
    retries: int = 0
    split: bool = False
    reasons: list[str] = field(default_factory=list)
    family: str = ""
    """Topic suffix of the family, e.g. `session-events` (a metrics label)."""
    seconds: float = 0.0
    """Wall time of the whole batch, retries included."""
    freshness_s: list[float] = field(default_factory=list)
    """occurred_at → projected into Redis, in seconds, of each new event."""
