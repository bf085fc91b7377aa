"""Shortcuts taken on the hot path for speed give exactly what the slow forms gave."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from schemas.events import EventId, VoiceSynthesized

_EVENT_ID: TypeAdapter[str] = TypeAdapter(EventId)


@given(st.uuids(), st.booleans())
def test_canonical_uuid_text_is_what_uuid_prints(value: uuid.UUID, upper: bool) -> None:
    text = str(value).upper() if upper else str(value)
    assert _EVENT_ID.validate_python(text) == str(uuid.UUID(text))


@pytest.mark.parametrize(
    "bad",
    [
        "550e8400-e29b-41d4-a716-446655440000\n",
        "{550e8400-e29b-41d4-a716-446655440000}",
        "550e8400e29b41d4a716446655440000",
        "550e8400-e29b-41d4-a716-44665544000g",
    ],
)
def test_non_canonical_uuid_forms_are_still_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        _EVENT_ID.validate_python(bad)


def test_audio_bytes_are_the_decoded_base64() -> None:
    audio = bytes(range(256)) * 4
    event = VoiceSynthesized(
        event_id=str(uuid.uuid4()),
        occurred_at="2025-01-30T10:30:00Z",
        user_id="u1",
        session_id=str(uuid.uuid4()),
        speaker_id=1,
        text="はい",
        audio=base64.b64encode(audio).decode(),
        latency_ms=12.0,
    )
    assert event.audio_bytes == audio
