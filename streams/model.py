"""The shared vocabulary: state of sessions and users, cache entries, a day's
counters and figures, and what a batch did.

Plain dataclasses: the reducers change the state, the PostgreSQL store loads
and saves it (rows in → these types out), the projections turn it into Redis
values; the pipeline reports a `BatchOutcome`, which the metrics read.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from operator import attrgetter
from typing import Any, Literal, TypeVar

import pybase64

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


_State = TypeVar("_State", SessionState, UserState)


def _shallow_copier(cls: type[_State]) -> Callable[[_State], _State]:
    every_field = attrgetter(*(f.name for f in fields(cls)))

    def copy(state: _State) -> _State:
        return cls(*every_field(state))

    return copy


copy_session: Callable[[SessionState], SessionState] = _shallow_copier(SessionState)
"""`dataclasses.replace(session)`: a new object with the same field values (not deep).

The reducers change copies of the rows a batch loaded (a session and its
user per session the batch touches); `replace` took 1.8 µs a copy (10 % of the session handler's
samples in a py-spy profile of `rpcache bench --only stages`), this 0.4 µs.
Built from `fields()`, so a field added later is copied too."""
copy_user: Callable[[UserState], UserState] = _shallow_copier(UserState)
"""`dataclasses.replace(user)`, as `copy_session`."""


@dataclass
class BatchOutcome:
    """What one batch did, for logs, metrics and tests."""

    messages: int = 0
    accepted: int = 0
    new: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    misrouted: int = 0
    """Valid events whose Kafka key is not their user_id (`misrouted`): accepted."""
    redis_ops: int = 0
    retries: int = 0
    split: bool = False
    reasons: list[str] = field(default_factory=list)
    topic: str = ""
    """Topic suffix of the batch, e.g. `session-events` (its agent is the metrics label)."""
    seconds: float = 0.0
    """Wall time of the whole batch, retries included."""
    freshness_s: list[float] = field(default_factory=list)
    """occurred_at → projected into Redis, in seconds, of each new event."""


# --- cache entries: what a batch writes, what a key projects ---------------------------
@dataclass(frozen=True, slots=True)
class AiEntry:
    """One ai.response of a batch, as the `ai_responses` upsert takes it."""

    prompt_hash: str
    prompt: str
    response: str | None
    provider: str | None
    model: str | None
    cached_at: datetime | None
    source_event_id: str | None
    uses: int
    hits: int
    last_used_at: datetime


@dataclass(frozen=True, slots=True)
class VoiceEntry:
    """One voice.synthesized of a batch, as the `voice_clips` upsert takes it."""

    speaker_id: int
    text_hash: str
    text: str
    audio: bytes | None
    audio_format: str | None
    cached_at: datetime | None
    source_event_id: str | None
    uses: int
    hits: int
    last_used_at: datetime


@dataclass(frozen=True, slots=True)
class CachedAiResponse:
    """An `ai_responses` row that holds a response (a miss stored it at `cached_at`):
    what `ai_response:{H(prompt)}` projects, wherever the row was read."""

    prompt_hash: str
    response: str
    provider: str
    model: str
    cached_at: datetime


@dataclass(frozen=True, slots=True)
class CachedVoiceClip:
    """A `voice_clips` row that holds a clip: what `voice:{speaker_id}:{H(text)}` projects.

    `audio_b64` is the value of the key (the base64 the events carry); built by
    `voice_clip` from a stored row, or from the miss's own event on the hot path.
    """

    speaker_id: int
    text_hash: str
    audio_b64: str
    cached_at: datetime


def voice_clip(
    speaker_id: int, text_hash: str, audio: bytes | None, cached_at: datetime | None
) -> CachedVoiceClip | None:
    """The clip a `voice_clips` row holds, or None: THE voice rule.

    A row is projectable only when it has audio and cached_at (both are set by
    the miss that stored the clip; a row only hits have touched has neither).
    The store's statements select with the same rule in SQL
    (`streams.store.caches.VOICE_HELD`), so a LIMIT counts projectable rows;
    rows still pass through here, so no reader can project one without it.
    """
    if audio is None or cached_at is None:
        return None
    # pybase64: the same standard, padded alphabet as base64.b64encode, ~10× faster on a
    # clip (replay, rebuild and the reader's fallback encode every clip they project)
    return CachedVoiceClip(speaker_id, text_hash, pybase64.b64encode_as_string(audio), cached_at)


@dataclass(frozen=True, slots=True)
class PopularScenario:
    """A scenario of many sessions: its latest context, for `scenario:{id}:context`."""

    scenario_id: str
    sessions: int
    context: Any
    """The latest non-null conversation_context (JSON), `{}` when none."""


# --- a business day: its counters and its figures ------------------------------------
SESSIONS_STARTED = "sessions_started"
"""daily_counters name behind total_sessions_today."""
AI_HITS = "ai_hits"
AI_MISSES = "ai_misses"
AI_FAILED = "ai_failed"
AI_LATENCY_US = "ai_latency_us"
"""Sum of ai.response latency in microseconds (integer, exact to add)."""
VOICE_HITS = "voice_hits"
VOICE_MISSES = "voice_misses"
VOICE_FAILED = "voice_failed"


@dataclass(frozen=True, slots=True)
class DayCounters:
    """One business day of `daily_counters` (a counter without a row is 0).

    The field names are the counter names above (the reducers add to them).
    """

    sessions_started: int = 0
    ai_hits: int = 0
    ai_misses: int = 0
    ai_failed: int = 0
    ai_latency_us: int = 0
    voice_hits: int = 0
    voice_misses: int = 0
    voice_failed: int = 0

    @classmethod
    def of(cls, values: Mapping[str, int]) -> DayCounters:
        """From name → value (the table's rows); a name not listed here is ignored."""
        return cls(**{name: values[name] for name in COUNTER_NAMES if name in values})


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DayCounters))


@dataclass(frozen=True, slots=True)
class CacheDay:
    """A day's lookups of one cache (`ai` or `voice`)."""

    hits: int
    misses: int
    lookups: int
    hit_rate: float
    """hits / lookups, 0.0 without lookups."""


@dataclass(frozen=True, slots=True)
class DayFigures:
    """A business day's figures (SPEC §4 stats; README defines each).

    Computed from `DayCounters` by one function, `streams.projections.day_figures`,
    and read by every figure shown: the `stats:realtime:{day}` hash, `/metrics`,
    `/dashboard` and the alert rules.
    """

    day: date
    sessions_started: int
    ai: CacheDay
    voice: CacheDay
    avg_response_ms: float
    """Mean latency_ms of the day's ai.response events, hits and misses."""
    error_rate: float
    """Failed / all inference and synthesis events."""
    active_sessions: int | None = None
    """A gauge of now: known for today only (None for other days)."""
    system_load: float | None = None
    """active_sessions / capacity (MAX_CONCURRENT_SESSIONS), with active_sessions."""
