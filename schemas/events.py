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
import pybase64
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

RFC3339_PATTERN: Final = (
    r"^(?:19[7-9][0-9]|2[0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""What an occurred_at must look like (ASCII digits, each field in its range, years
1970-2999); the published schemas carry it too, so a JSON Schema validator refuses
hour 24, a leap second `:60` or the year 0001, which the `date-time` format allows
(RFC 3339 §5.6) and Python's parser does not. Group 1 is the fraction."""
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_RFC3339 = re.compile(RFC3339_PATTERN)
_UUID = re.compile(UUID_PATTERN)
BASE64_PATTERN: Final = (
    r"^(?:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
    r"|(?:[A-Za-z0-9+/]{4})+=*)?$"
)
"""Base64 as `binascii.a2b_base64(strict_mode=True)` accepts it, for the published schema:
padded groups, no whitespace; CPython also takes `=`s after a last complete group."""
MAX_INT32: Final = 2_147_483_647
"""Bound of speaker_id: PostgreSQL's `integer` column, and far beyond any voice catalogue."""
MAX_LATENCY_MS: Final = 86_400_000.0
"""Bound of latency_ms (24 h). SPEC §3 says only "number ≥ 0"; a latency longer than a
day is a unit error (nanoseconds or microseconds sent as ms) and would swamp the day's
avg_response_time, so it is dead-lettered as `out_of_range` (README, Decisions)."""
MAX_JSON_DEPTH: Final = 128
"""How deep a JSON object field (conversation_context, performance_stats,
preferences) may nest: orjson parses 1 024 levels but it and pydantic write only
~255, so a deeper one was accepted and then failed every write as
processing_error after retries (README, Decisions)."""
_NESTING_TYPES: Final = frozenset(
    {"user.login", "session.started", "session.updated", "session.activity"}
)
"""The event types with JSON object fields; the others hold no nesting to check."""
_OBJECT_FIELDS: Final = ("conversation_context", "performance_stats", "preferences")
"""The JSON object fields of those types (unknown fields are dropped, not checked)."""
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


def decode_base64(text: str) -> bytes:
    """`binascii.a2b_base64(text, strict_mode=True)`, the rule of the audio field, at
    SIMD speed: pybase64 decodes with `validate=True`; what it refuses goes to
    binascii itself, which then decodes it or raises.

    Profile that justified it (this machine, a 56 KB clip): binascii 170-210 µs,
    pybase64 5 µs; a voice role-play service sends such clips on every miss.
    pybase64 refuses a few forms binascii's strict mode takes (`=`s after a
    last complete group: "AAAA="), and what it accepts, binascii accepts as the
    same bytes (checked on 1.1 million inputs; `tests/unit/test_base64.py`
    keeps a table and a property test). So the outcome is binascii's, always.
    Raises `binascii.Error` (a ValueError) on invalid base64, ValueError on
    non-ASCII text.
    """
    try:
        return pybase64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error is one; so is pybase64's non-ASCII refusal
        return binascii.a2b_base64(text, strict_mode=True)


def parse_rfc3339(value: object) -> datetime:
    """Parse an RFC 3339 timestamp that carries its offset; normalise to UTC."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp needs an offset")
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    shape = _RFC3339.match(value)
    if shape is None:
        raise ValueError(
            "must be RFC 3339 with an offset, each field in range and the year in"
            " 1970-2999, e.g. 2025-01-30T10:30:00Z"
        )
    text = value
    fraction = shape.group(1)
    if fraction is not None and len(fraction) > 7:  # Python keeps microseconds: cut the rest.
        text = value[: shape.start(1) + 7] + value[shape.end(1) :]
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid timestamp: {exc}") from None
    if moment.tzinfo is not UTC:
        try:
            moment = moment.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError(f"not a valid timestamp: {exc}") from None
    if not EARLIEST <= moment <= LATEST:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year}")
    return moment


EventId = Annotated[
    str,
    # The pattern is checked by _uuid_text (faster); json_schema_extra only publishes it.
    Field(strict=True, json_schema_extra={"pattern": UUID_PATTERN}),
    AfterValidator(_uuid_text),
]
SessionId = EventId
UserId = Annotated[str, Field(strict=True, pattern=USER_ID_PATTERN)]
ScenarioId = UserId
Timestamp = Annotated[
    datetime,
    Field(json_schema_extra={"pattern": RFC3339_PATTERN}),
    BeforeValidator(parse_rfc3339),
    PlainSerializer(format_utc, return_type=str),
]
SpeakerId = Annotated[int, Field(strict=True, ge=0, le=MAX_INT32)]
LatencyMs = Annotated[float, Field(strict=True, ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]
Text = Annotated[str, Field(strict=True)]
JsonObject = Annotated[dict[str, Any], Field(strict=True)]


def _wire_schema(schema: dict[str, Any]) -> None:
    """JSON Schema of an event as it is on the wire (`rpcache schemas`).

    `type` has a default so that the publisher's helpers need not repeat it,
    but every message carries it: it decides which model validates the rest.
    """
    kind = schema["properties"]["type"]
    kind.pop("default", None)
    kind["description"] = "The event type; decides the other fields."
    schema["required"] = ["type", *schema.get("required", [])]


class _Event(BaseModel):
    """Fields common to every event."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, strict=True, json_schema_extra=_wire_schema
    )

    event_id: EventId = Field(
        description="Unique id of the event, a UUID (stored lower-case). An event_id seen"
        " before is a duplicate and changes nothing."
    )
    occurred_at: Timestamp = Field(
        description="When it happened: RFC 3339 with an offset (Z or ±hh:mm), between 1970"
        " and 2999; digits finer than microseconds are cut. Event time, not arrival time,"
        " decides TTLs, idleness and the business day."
    )
    user_id: UserId = Field(description="Who; also the Kafka key of the message.")

    def to_json(self) -> bytes:
        """The wire form: UTF-8 JSON, optional fields left out when unset.

        Written by pydantic-core's serializer straight to bytes: the same bytes
        as `orjson.dumps(self.model_dump(mode="json", exclude_none=True))`, the
        form the event log has always kept (its payload_sha tells a redelivery
        from a conflict, so the bytes must not change; `tests/unit/
        test_event_json.py` holds the two equal on generated events), in 0.9 µs
        against 1.7 (timeit, a session.activity).
        """
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)

    def stored_json(self) -> bytes:
        """The form kept in PostgreSQL's event log (see VoiceSynthesized)."""
        return self.to_json()


_SESSION_ID = "The session, a UUID (the session_id of its session.started)."
_SPEAKER_ID = "The voice (speaker) id."
_LATENCY_MS = "How long the call took, in milliseconds."
_CONTEXT = "The conversation's context, any JSON object (session:{id} keeps it as JSON text)."
_STATS = "Performance figures, any JSON object (session:{id} keeps it as JSON text)."


class SessionScoped(_Event):
    session_id: SessionId = Field(description=_SESSION_ID)


class UserLogin(_Event):
    """A user logged in."""

    type: Literal["user.login"] = "user.login"
    session_id: SessionId | None = Field(None, description="Optional. " + _SESSION_ID)
    preferences: JsonObject | None = Field(
        None, description="The user's preferences, any JSON object (user:{id}:state keeps it)."
    )


class SessionStarted(SessionScoped):
    """A role-play session started; it counts toward the user's daily quota."""

    type: Literal["session.started"] = "session.started"
    speaker_id: SpeakerId = Field(description=_SPEAKER_ID)
    conversation_context: JsonObject | None = Field(None, description=_CONTEXT)
    scenario_id: ScenarioId | None = Field(
        None, description="The scenario played, if any (warm-up ranks scenarios by it)."
    )


class SessionUpdated(SessionScoped):
    """Some of a session's fields changed; the ones given replace the stored ones."""

    type: Literal["session.updated"] = "session.updated"
    status: Literal["active", "paused"] | None = None
    speaker_id: SpeakerId | None = Field(None, description=_SPEAKER_ID)
    conversation_context: JsonObject | None = Field(None, description=_CONTEXT)
    performance_stats: JsonObject | None = Field(None, description=_STATS)


class SessionActivity(SessionScoped):
    """A turn of the conversation: the session is active (its 30 min idle clock restarts)."""

    type: Literal["session.activity"] = "session.activity"
    performance_stats: JsonObject | None = Field(None, description=_STATS)


class SessionEnded(SessionScoped):
    """The session ended."""

    type: Literal["session.ended"] = "session.ended"
    reason: Text | None = Field(None, description="Why it ended, free text.")


class AiResponse(SessionScoped):
    """An LLM answered a prompt, from the roleplay service's cache (a hit) or not."""

    type: Literal["ai.response"] = "ai.response"
    prompt: Text = Field(description="The prompt; ai_response:{H(prompt)} is its cache key.")
    response: Text
    provider: Text
    model: Text
    latency_ms: LatencyMs = Field(description=_LATENCY_MS)
    cache_hit: Annotated[bool, Field(strict=True)] = Field(
        False, description="true: served from the cache (counts a hit, writes nothing)."
    )


class AiFailed(SessionScoped):
    """An LLM call failed."""

    type: Literal["ai.failed"] = "ai.failed"
    provider: Text
    model: Text
    error: Text
    latency_ms: LatencyMs = Field(description=_LATENCY_MS)


def _voice_schema(schema: dict[str, Any]) -> None:
    """`_wire_schema`, and a miss (cache_hit false or absent) needs audio: JSON Schema's
    `if`/`then` (2020-12 §10.2.2; `properties` holds when cache_hit is absent)."""
    _wire_schema(schema)
    schema["if"] = {"properties": {"cache_hit": {"const": False}}}
    schema["then"] = {"properties": {"audio": {"minLength": 1}}}


class VoiceSynthesized(SessionScoped):
    """Speech was synthesized for a text, from the roleplay service's cache (a hit) or not."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, strict=True, json_schema_extra=_voice_schema
    )

    type: Literal["voice.synthesized"] = "voice.synthesized"
    speaker_id: SpeakerId = Field(description=_SPEAKER_ID)
    text: Text = Field(description="The text spoken; voice:{speaker_id}:{H(text)} is its key.")
    audio: Text = Field(
        description="Base64 (RFC 4648: standard alphabet, padded, no line breaks) of the"
        " audio bytes; the worker decodes it and rejects anything else. Decoded, at most"
        " VOICE_MAX_AUDIO_BYTES (default 716800). Not empty on a miss (cache_hit false):"
        " the miss caches it, and an empty clip would be served to every later reader as"
        " a hit; a hit may send it empty. The value of the voice key.",
        json_schema_extra={"contentEncoding": "base64", "pattern": BASE64_PATTERN},
    )
    audio_format: Text = Field("wav", description="Container or codec of the audio.")
    latency_ms: LatencyMs = Field(description=_LATENCY_MS)
    cache_hit: Annotated[bool, Field(strict=True)] = Field(
        False, description="true: served from the cache (counts a hit, writes nothing)."
    )
    _audio_bytes: bytes = PrivateAttr(default=b"")

    @model_validator(mode="after")
    def _decode_audio(self) -> VoiceSynthesized:
        """Decode once: validates the base64 and keeps the bytes for PostgreSQL."""
        try:
            self._audio_bytes = decode_base64(self.audio)
        except binascii.Error as exc:
            raise ValueError(f"audio must be base64: {exc}") from None
        if not self._audio_bytes and not self.cache_hit:
            raise ValueError("audio is empty on a miss: it would be cached as an empty clip")
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
    """A speech synthesis failed."""

    type: Literal["voice.failed"] = "voice.failed"
    speaker_id: SpeakerId = Field(description=_SPEAKER_ID)
    text: Text
    error: Text
    latency_ms: LatencyMs = Field(description=_LATENCY_MS)


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
    OUT_OF_RANGE = "out_of_range"
    """A number the spec's type allows but past rpcache's documented bound."""
    OCCURRED_IN_FUTURE = "occurred_in_future"
    """occurred_at later than now + MAX_CLOCK_SKEW_S at the time the worker read it."""
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
    raw: bytes | None,
    *,
    topic: str | None,
    max_bytes: int,
    max_audio_bytes: int | None = None,
    not_after: datetime | None = None,
) -> Event | Rejection:
    """Validate one message value; `topic` is the topic suffix it came from.

    Never raises for bad input. `topic=None` skips the topic check (used by
    tools that read events outside Kafka). `max_audio_bytes` limits the
    decoded audio of a voice clip. `not_after` (aware) rejects an event whose
    occurred_at is later, as `occurred_in_future`: the worker passes now plus
    the clock-skew tolerance, so one event stamped a year ahead cannot pin keys
    and the quota day (README, Decisions).
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
        reason = (
            RejectReason.OUT_OF_RANGE if _only_over_bounds(exc) else RejectReason.INVALID_FIELDS
        )
        return Rejection(reason, _describe(exc), event_id)
    if not_after is not None and event.occurred_at > not_after:
        return Rejection(
            RejectReason.OCCURRED_IN_FUTURE,
            f"occurred_at {format_utc(event.occurred_at)} is after {format_utc(not_after)}"
            " (now + MAX_CLOCK_SKEW_S)",
            event_id,
        )
    if b"\\" in raw and b"\\u0000" in raw and _contains_nul(event.model_dump()):
        # PostgreSQL cannot store U+0000; unknown fields are dropped, so only ours count.
        # JSON can only carry U+0000 escaped. `b"\\" in raw` is one memchr: 0.3 µs
        # against 3.9 for the six-byte search on the bench's voice messages (up to
        # 86 KB of base64, which has no backslash).
        return Rejection(RejectReason.NUL_CHARACTER, "strings may not contain U+0000", event_id)
    if kind in _NESTING_TYPES and raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:
        # Only a message with that many brackets can nest that deep: two C scans of
        # a small session message, the walk itself only then.
        deep = _too_deep({k: obj[k] for k in _OBJECT_FIELDS if k in obj}, MAX_JSON_DEPTH)
        if deep is not None:
            return Rejection(
                RejectReason.INVALID_FIELDS,
                f"{deep} nests deeper than {MAX_JSON_DEPTH} levels",
                event.event_id,
            )
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


def _too_deep(fields: dict[str, Any], limit: int) -> str | None:
    """The first field whose value nests more than `limit` objects/arrays deep."""
    for name, value in fields.items():
        stack: list[tuple[object, int]] = [(value, 1)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, dict | list):
                if depth > limit:
                    return name
                children = node.values() if isinstance(node, dict) else node
                stack.extend((child, depth + 1) for child in children)
    return None


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def _only_over_bounds(exc: ValidationError) -> bool:
    """Every error is a number above a documented bound (speaker_id, latency_ms).

    An integer too large for a double's exact range arrives from orjson as a
    float, which strict int fields report as a type error: counted as over the
    bound when it is a whole number above it.
    """
    for err in exc.errors(include_url=False):
        value = err.get("input")
        over_int = (
            err["type"] == "int_type"
            and isinstance(value, float)
            and value.is_integer()
            and value > MAX_INT32
        )
        if err["type"] != "less_than_equal" and not over_int:
            return False
    return True


def _describe(exc: ValidationError) -> str:
    """One line per field: `speaker_id: Input should be a valid integer`."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"][1:]) or "event"  # [0] is the union tag
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)[:1000]
