"""Redis key formats, TTLs and topic names (SPEC §2 and §4).

The one place that spells a key or a topic: reducers, the reader, replay and
warm-up all call these functions. Ids reaching them were validated by
`schemas.events` (patterns without `:`, `{`, `}` or spaces), so a key can
never be injected through an id.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal

from schemas.hashing import H

SESSION_TTL: Final = timedelta(minutes=30)
"""A session hash lives 30 minutes after its last activity; idle expiry too."""
USER_STATE_TTL: Final = timedelta(hours=1)
AI_RESPONSE_TTL: Final = timedelta(hours=1)
VOICE_TTL: Final = timedelta(hours=24)
METRICS_TTL: Final = timedelta(minutes=5)
STATS_TTL: Final = timedelta(hours=24)
SCENARIO_CONTEXT_TTL: Final = timedelta(hours=1)
"""Warm-up's popular scenario contexts live as long as cached AI responses."""
LOADED_MARKER_TTL: Final = timedelta(hours=24)
"""The data-loss marker's TTL; refreshed by the worker far more often than this."""

MetricName = Literal["response_time", "synthesis_time"]
MetricWindow = Literal["1m", "5m", "1h"]
METRIC_WINDOWS: Final[dict[MetricWindow, timedelta]] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
}

# --- topics -----------------------------------------------------------------
SESSION_TOPIC: Final = "session-events"
INFERENCE_TOPIC: Final = "inference-events"
SYNTHESIS_TOPIC: Final = "synthesis-events"
DEAD_LETTER_TOPIC: Final = "dead-letters"
ALERTS_TOPIC: Final = "alerts"
AGENT_TOPICS: Final[dict[str, str]] = {
    "sessions": SESSION_TOPIC,
    "inference": INFERENCE_TOPIC,
    "synthesis": SYNTHESIS_TOPIC,
}
"""The source topics, each with its Faust agent and its pipeline: agent name → topic suffix.

The name is the Faust agent's name and the `agent` label of the metrics;
the write side's registry (streams/write/registry.py) gives each its handler."""
SOURCE_TOPICS: Final = tuple(AGENT_TOPICS.values())


def topic_name(prefix: str, suffix: str) -> str:
    """Full topic name, e.g. `roleplay.session-events`."""
    return f"{prefix}{suffix}"


# --- keys -------------------------------------------------------------------
def session_key(session_id: str) -> str:
    return f"session:{session_id}"


def user_state_key(user_id: str) -> str:
    return f"user:{user_id}:state"


def ai_response_key(prompt: str) -> str:
    return ai_response_key_for_hash(H(prompt))


def ai_response_key_for_hash(prompt_hash: str) -> str:
    return f"ai_response:{prompt_hash}"


def voice_key(speaker_id: int, text: str) -> str:
    return voice_key_for_hash(speaker_id, H(text))


def voice_key_for_hash(speaker_id: int, text_hash: str) -> str:
    return f"voice:{speaker_id}:{text_hash}"


def metrics_key(metric: MetricName, window: MetricWindow) -> str:
    return f"metrics:{metric}:{window}"


def stats_key(day: date) -> str:
    return f"stats:realtime:{day.isoformat()}"


def scenario_context_key(scenario_id: str) -> str:
    """Warm-up's copy of a popular scenario's conversation context (JSON)."""
    return f"scenario:{scenario_id}:context"


LOADED_MARKER_KEY: Final = "rpcache:loaded"
"""The data-loss marker: present while Redis holds rpcache's projection, so its
absence means Redis lost its data (a restart without persistence, a FLUSHALL)."""


# --- time helpers -------------------------------------------------------------
def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, second precision or finer, as stored in hashes."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
