"""Event models and their validation (SPEC §3).

`decode_event` turns the raw bytes of a Kafka message into either a typed
event or a `Rejection` saying exactly why it cannot be accepted. It never
raises for bad input: the caller dead-letters rejections and goes on.

Validation is strict on purpose: `"6"` is not a speaker id, `true` is not a
latency and a timestamp without an offset is not a moment. Unknown extra
fields are ignored so producers can add fields before consumers know them.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from schemas.keys import INFERENCE_TOPIC, SESSION_TOPIC, SYNTHESIS_TOPIC, format_utc

USER_ID_PATTERN: Final = r"^[A-Za-z0-9_.@-]{1,128}$"
"""SPEC §3. Also used for scenario ids: anything that ends up in a key."""

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_INT32: Final = 2_147_483_647
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2999, 12, 31, tzinfo=UTC)
"""Event times outside these are typos, and TTL arithmetic near year 9999 overflows."""


def _uuid_text(value: str) -> str:
    """Canonical lower-case UUID text; the form used in keys and rows.

    The pattern fixes the 8-4-4-4-12 hex layout, so lower-casing gives exactly
    `str(uuid.UUID(value))` without building a UUID for every id (hot path).
    """
    if not _UUID.fullmatch(value):
        raise ValueError("must be a UUID such as 550e8400-e29b-41d4-a716-446655440000")
    return value.lower()


def parse_rfc3339(value: object) -> datetime:
    """Parse an RFC 3339 timestamp that carries its offset; normalise to UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp needs an offset")
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    if not _RFC3339.match(value):
        raise ValueError("must be RFC 3339 with an offset, e.g. 2025-01-30T10:30:00Z")
    text = value
    if "." in text:  # Python keeps microseconds only: cut finer digits.
        head, _, tail = text.partition(".")
        digits = re.match(r"\d+", tail)
        assert digits is not None
        text = f"{head}.{digits.group()[:6]}{tail[digits.end() :]}"
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z")).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {exc}") from None
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year}")
    return moment


EventId = Annotated[str, Field(strict=True), AfterValidator(_uuid_text)]
SessionId = EventId
UserId = Annotated[str, Field(strict=True, pattern=USER_ID_PATTERN)]
ScenarioId = UserId
Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_rfc3339),
    PlainSerializer(format_utc, return_type=str),
]
SpeakerId = Annotated[int, Field(strict=True, ge=0, le=MAX_INT32)]
LatencyMs = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True)]
JsonObject = Annotated[dict[str, Any], Field(strict=True)]


class _Event(BaseModel):
    """Fields common to every event."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    event_id: EventId
    occurred_at: Timestamp
    user_id: UserId

    def to_json(self) -> bytes:
        """The wire form: UTF-8 JSON, optional fields left out when unset."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))

    def stored_json(self) -> bytes:
        """The form kept in PostgreSQL's event log (see VoiceSynthesized)."""
        return self.to_json()


class SessionScoped(_Event):
    session_id: SessionId


class UserLogin(_Event):
    type: Literal["user.login"] = "user.login"
    session_id: SessionId | None = None
    preferences: JsonObject | None = None


class SessionStarted(SessionScoped):
    type: Literal["session.started"] = "session.started"
    speaker_id: SpeakerId
    conversation_context: JsonObject | None = None
    scenario_id: ScenarioId | None = None


class SessionUpdated(SessionScoped):
    type: Literal["session.updated"] = "session.updated"
    status: Literal["active", "paused"] | None = None
    speaker_id: SpeakerId | None = None
    conversation_context: JsonObject | None = None
    performance_stats: JsonObject | None = None


class SessionActivity(SessionScoped):
    type: Literal["session.activity"] = "session.activity"
    performance_stats: JsonObject | None = None


class SessionEnded(SessionScoped):
    type: Literal["session.ended"] = "session.ended"
    reason: Text | None = None


class AiResponse(SessionScoped):
    type: Literal["ai.response"] = "ai.response"
    prompt: Text
    response: Text
    provider: Text
    model: Text
    latency_ms: LatencyMs
    cache_hit: Annotated[bool, Field(strict=True)] = False


class AiFailed(SessionScoped):
    type: Literal["ai.failed"] = "ai.failed"
    provider: Text
    model: Text
    error: Text
    latency_ms: LatencyMs


class VoiceSynthesized(SessionScoped):
    type: Literal["voice.synthesized"] = "voice.synthesized"
    speaker_id: SpeakerId
    text: Text
    audio: Text
    """Base64 of the audio bytes: the value of the voice:{speaker}:{H(text)} key."""
    audio_format: Text = "wav"
    latency_ms: LatencyMs
    cache_hit: Annotated[bool, Field(strict=True)] = False
    _audio_bytes: bytes = PrivateAttr(default=b"")

    @model_validator(mode="after")
    def _decode_audio(self) -> VoiceSynthesized:
        """Decode once: validates the base64 and keeps the bytes for PostgreSQL."""
        try:
            self._audio_bytes = binascii.a2b_base64(self.audio, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError(f"audio must be base64: {exc}") from None
        return self

    @property
    def audio_bytes(self) -> bytes:
        # Pydantic's own storage: `self._audio_bytes` would take BaseModel's slow
        # __getattr__ path, on the hot path of every voice event.
        private: dict[str, bytes] = self.__pydantic_private__  # type: ignore[assignment]
        return private["_audio_bytes"]

    def stored_json(self) -> bytes:
        """The event without its audio, which lives once in `voice_clips` (bytea).

        Clips are hundreds of KB: the log keeps their SHA-256 and length, so a
        conflicting re-send with other audio is still told apart.
        """
        fields = self.model_dump(mode="json", exclude_none=True, exclude={"audio"})
        audio = self.audio_bytes
        fields["audio"] = {"sha256": hashlib.sha256(audio).hexdigest(), "bytes": len(audio)}
        return orjson.dumps(fields)


class VoiceFailed(SessionScoped):
    type: Literal["voice.failed"] = "voice.failed"
    speaker_id: SpeakerId
    text: Text
    error: Text
    latency_ms: LatencyMs


SessionEvent = UserLogin | SessionStarted | SessionUpdated | SessionActivity | SessionEnded
InferenceEvent = AiResponse | AiFailed
SynthesisEvent = VoiceSynthesized | VoiceFailed
Event = SessionEvent | InferenceEvent | SynthesisEvent

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])

TOPIC_OF_TYPE: Final[dict[str, str]] = {
    "user.login": SESSION_TOPIC,
    "session.started": SESSION_TOPIC,
    "session.updated": SESSION_TOPIC,
    "session.activity": SESSION_TOPIC,
    "session.ended": SESSION_TOPIC,
    "ai.response": INFERENCE_TOPIC,
    "ai.failed": INFERENCE_TOPIC,
    "voice.synthesized": SYNTHESIS_TOPIC,
    "voice.failed": SYNTHESIS_TOPIC,
}
"""Which topic (without prefix) each event type belongs to."""


class RejectReason(StrEnum):
    """Why an event was dead-lettered; stable codes for dashboards and alerts."""

    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELDS = "invalid_fields"
    WRONG_TOPIC = "wrong_topic"
    NUL_CHARACTER = "nul_character"
    AUDIO_TOO_LARGE = "audio_too_large"
    # Raised later than decoding, by the state reducers or the sinks:
    UNKNOWN_SESSION = "unknown_session"
    SESSION_OWNER_MISMATCH = "session_owner_mismatch"
    DUPLICATE_SESSION = "duplicate_session"
    DUPLICATE_EVENT_CONFLICT = "duplicate_event_conflict"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event that cannot be accepted, with a reason a human can act on."""

    reason: RejectReason
    detail: str
    event_id: str | None = None


def decode_event(
    raw: bytes | None, *, topic: str | None, max_bytes: int, max_audio_bytes: int | None = None
) -> Event | Rejection:
    """Validate one message value; `topic` is the topic suffix it came from.

    Never raises for bad input. `topic=None` skips the topic check (used by
    tools that read events outside Kafka). `max_audio_bytes` limits the
    decoded audio of a voice clip.
    """
    if raw is None:
        return Rejection(RejectReason.INVALID_JSON, "empty message value (tombstone)")
    if len(raw) > max_bytes:
        return Rejection(
            RejectReason.TOO_LARGE, f"{len(raw)} bytes is over the limit of {max_bytes}"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection(RejectReason.INVALID_JSON, f"not UTF-8 JSON: {exc}")
    if not isinstance(obj, dict):
        return Rejection(RejectReason.NOT_AN_OBJECT, f"top level is {type(obj).__name__}")
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in TOPIC_OF_TYPE:
        return Rejection(RejectReason.UNKNOWN_TYPE, f"unknown event type {kind!r:.80}", event_id)
    if topic is not None and TOPIC_OF_TYPE[kind] != topic:
        return Rejection(
            RejectReason.WRONG_TOPIC,
            f"{kind} belongs on {TOPIC_OF_TYPE[kind]}, not {topic}",
            event_id,
        )
    try:
        event = _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        return Rejection(RejectReason.INVALID_FIELDS, _describe(exc), event_id)
    if b"\\u0000" in raw and _contains_nul(event.model_dump()):
        # PostgreSQL cannot store U+0000; unknown fields are dropped, so only ours count.
        return Rejection(RejectReason.NUL_CHARACTER, "strings may not contain U+0000", event_id)
    if (
        max_audio_bytes is not None
        and isinstance(event, VoiceSynthesized)
        and len(event.audio_bytes) > max_audio_bytes
    ):
        return Rejection(
            RejectReason.AUDIO_TOO_LARGE,
            f"audio is {len(event.audio_bytes)} bytes, over the limit of {max_audio_bytes}",
            event.event_id,
        )
    return event


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def _describe(exc: ValidationError) -> str:
    """One line per field: `speaker_id: Input should be a valid integer`."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"][1:]) or "event"  # [0] is the union tag
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)[:1000]
