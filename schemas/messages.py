"""The messages rpcache itself publishes: dead letters and alerts.

Each model IS the message: the worker builds it and publishes its
`to_json()`, and `rpcache schemas` writes its JSON Schema from the same
class, so the published schema and the wire cannot drift. Consumers may parse
a message with the model too (`DeadLetterMessage.model_validate_json(value)`);
fields added later are ignored by older models.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.events import UUID_PATTERN, Timestamp

DEAD_LETTER_ID_NAMESPACE: Final = uuid.UUID("2904e525-f308-4d91-b936-502d96f7f8bb")
"""UUIDv5 namespace of `dead_letter_id` (fixed forever: changing it changes every id)."""

KAFKA_ORIGINAL_LIMIT: Final = 256 * 1024
"""Bytes of the original value carried in a dead-letter message; PostgreSQL keeps all."""

KAFKA_KEY_LIMIT: Final = 1024
"""Bytes of the original key a dead-letter message carries (as its own Kafka key and
in `key`); PostgreSQL keeps all. SPEC §3 keys are user_ids of at most 128 characters."""

TEXT_LIMIT: Final = 1000
"""Characters of a dead letter's `detail` and `event_id` (stored and published)."""


def dead_letter_id(source_topic: str, partition: int, offset: int, reason: str) -> str:
    """The stable id of a dead letter: UUIDv5 of `{source_topic}/{partition}/{offset}/{reason}`.

    Those four fields are the `dead_letters` row's unique key, so every
    publication of a row (a republish after a crash, a redelivered message
    rejected again for the same reason) carries the same id. Kafka topic names
    cannot contain `/`, so the name is unambiguous.
    """
    return str(
        uuid.uuid5(DEAD_LETTER_ID_NAMESPACE, f"{source_topic}/{partition}/{offset}/{reason}")
    )


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    def to_json(self) -> bytes:
        """The wire form: UTF-8 JSON, every field present (null where it has no value)."""
        return orjson.dumps(self.model_dump(mode="json"))


NonNegative = Annotated[int, Field(ge=0)]


class DeadLetterMessage(_Message):
    """A message rpcache could not accept.

    On `{prefix}dead-letters` (`roleplay.dead-letters` by default), keyed by
    the original message's key (no key when it had none). Published from
    PostgreSQL's `dead_letters` table (an outbox): once when nothing fails,
    possibly again after a worker crash; dedupe on `dead_letter_id`.
    """

    dead_letter_id: str = Field(
        description="Stable id: UUIDv5 (namespace 2904e525-f308-4d91-b936-502d96f7f8bb) of"
        " `{source_topic}/{partition}/{offset}/{reason}`. The same on every publication of"
        " this dead letter, so consumers dedupe on it.",
        json_schema_extra={"pattern": UUID_PATTERN},
    )
    reason: str = Field(
        description="Why it was rejected, a stable code such as invalid_json, invalid_fields,"
        " unknown_session or processing_error (every code: the README's dead-letter reasons;"
        " new codes may be added)."
    )
    detail: str = Field(description="What exactly was wrong, for a human (at most ~1000 chars).")
    source_topic: str = Field(description="Topic the message was consumed from.")
    partition: NonNegative = Field(description="Partition of source_topic.")
    offset: NonNegative = Field(description="Offset in that partition.")
    event_id: str | None = Field(
        description="The message's event_id when it had a string one (not necessarily a"
        f" valid UUID: it may be why the message was rejected), else null. At most"
        f" {TEXT_LIMIT} characters; U+0000 and lone surrogates replaced by U+FFFD."
    )
    key: str | None = Field(
        description="The message's key as UTF-8 text (undecodable bytes replaced by U+FFFD),"
        f" cut at {KAFKA_KEY_LIMIT} bytes; null when it had none. This message's own Kafka"
        " key is the original bytes, cut the same way. PostgreSQL's"
        " dead_letters.message_key keeps it whole."
    )
    key_size: NonNegative = Field(description="Bytes of the whole original key (0: none).")
    original: str = Field(
        description="Base64 (standard alphabet, padded) of the message's value as received,"
        f" cut at {KAFKA_ORIGINAL_LIMIT} bytes (256 KiB); empty for a null value (tombstone)."
        " PostgreSQL's dead_letters.original keeps it whole.",
        json_schema_extra={"contentEncoding": "base64"},
    )
    original_size: NonNegative = Field(description="Bytes of the whole original value.")
    original_truncated: bool = Field(description="Whether `original` was cut (size > 256 KiB).")
    dead_lettered_at: Timestamp = Field(
        description="When the dead letter was recorded (RFC 3339, UTC, `Z`)."
    )


AlertState = Literal["firing", "resolved"]
AlertLevel = Literal["WARNING", "CRITICAL"]


class AlertMessage(_Message):
    """An alert on `{prefix}alerts` (`roleplay.alerts` by default), keyed by the rule name.

    Published by the leader worker once when a rule starts firing and once
    when it recovers (not on every evaluation).
    """

    rule: str = Field(
        description="The rule: ai_cache_hit_rate_low, voice_cache_hit_rate_low,"
        " avg_response_time_high, redis_memory_high, connection_failure_rate,"
        " connected_clients_high, or redis_rebuild (Redis lost its data and is rebuilt)."
    )
    state: AlertState = Field(description="firing: the crossing began; resolved: it ended.")
    level: AlertLevel
    metric: str = Field(description="The figure compared, e.g. ai_cache_hit_rate.")
    value: float = Field(
        allow_inf_nan=False, description="The figure when the state changed (rates are 0..1)."
    )
    threshold: float = Field(allow_inf_nan=False, description="The rule's threshold.")
    time: Timestamp = Field(description="When the state changed (RFC 3339, UTC, `Z`).")
