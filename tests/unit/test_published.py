"""The published JSON Schemas (`rpcache schemas`): committed copies match the models, and
real messages — the publisher's events, dead letters, alerts — validate against them."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from typer.testing import CliRunner

from schemas.events import TOPIC_OF_TYPE, Rejection, decode_event
from schemas.published import (
    ALERT_FILE,
    COMMITTED_DIR,
    DEAD_LETTER_FILE,
    DIALECT,
    drift,
    event_file,
    rendered,
    schemas,
)
from streams.cli import cli
from streams.observe.alerts import Alert
from streams.publisher import EventPublisher
from streams.write.deadletters import dead_letter_message
from tests.unit.test_messages import row

SID = "550E8400-E29B-41D4-A716-446655440000"
AT = datetime(2025, 1, 30, 10, 30, tzinfo=UTC)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        orjson.loads((COMMITTED_DIR / name).read_bytes()),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def test_committed_schemas_match_the_models() -> None:
    problems = drift(COMMITTED_DIR)
    assert not problems, (
        f"schemas/json drifted from the models ({'; '.join(problems)}): run `rpcache schemas`"
        " from the checkout's root and commit schemas/json/"
    )


def test_one_schema_per_message_each_a_valid_2020_12_schema() -> None:
    names = set(schemas())
    assert names == {event_file(t) for t in TOPIC_OF_TYPE} | {DEAD_LETTER_FILE, ALERT_FILE}
    for name, schema in schemas().items():
        assert schema["$schema"] == DIALECT
        Draft202012Validator.check_schema(schema)
        assert schema["description"], name


def test_rendering_is_stable_and_sorted() -> None:
    content = rendered()[event_file("session.started")]
    assert content == rendered()[event_file("session.started")]
    text = content.decode()
    assert text.endswith("}\n") and text.startswith('{\n  "$schema"')
    assert list(orjson.loads(content)) == sorted(orjson.loads(content))


class Capture(EventPublisher):
    """An EventPublisher whose messages stop here instead of at a broker."""

    def __init__(self) -> None:
        super().__init__(["localhost:1"], "roleplay.")
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, *, wait: bool = True
    ) -> None:
        assert value is not None
        self.sent.append((topic, key, value))


async def published_events() -> list[tuple[str, bytes]]:
    """(topic, value) of each helper, with optional fields both given and left out."""
    pub = Capture()
    audio = base64.b64encode(b"RIFF\x00\x01wav").decode()
    await pub.user_login("user123")
    await pub.user_login("a.b@c-d_e", preferences={"lang": "ja"})
    sid = await pub.session_started("user123", speaker_id=6)
    await pub.session_started(
        "user123",
        speaker_id=0,
        session_id=SID,
        conversation_context={"scene": "cafe"},
        scenario_id="s-1",
        occurred_at=AT,
    )
    await pub.session_updated("user123", sid, status="paused", speaker_id=2)
    await pub.session_updated("user123", sid, performance_stats={"wpm": 1})
    await pub.session_activity("user123", sid, performance_stats={"wpm": 120})
    await pub.session_ended("user123", sid, reason="user_left")
    await pub.session_ended("user123", sid)
    await pub.ai_response(
        "user123", sid, prompt="こんにちは", response="r", provider="p", model="m", latency_ms=0
    )
    await pub.ai_response(
        "user123", sid, prompt="p", response="r", provider="p", model="m", latency_ms=12.5,
        cache_hit=True,
    )  # fmt: skip
    await pub.ai_failed("user123", sid, provider="p", model="m", error="timeout", latency_ms=3)
    await pub.voice_synthesized(
        "user123", sid, speaker_id=6, text="t", audio_b64=audio, latency_ms=40
    )
    await pub.voice_synthesized(
        "user123", sid, speaker_id=6, text="t", audio_b64="", latency_ms=4, audio_format="ogg",
        cache_hit=True,
    )  # fmt: skip
    await pub.voice_failed("user123", sid, speaker_id=1, text="t", error="x", latency_ms=1)
    return [(topic, value) for topic, _, value in pub.sent]


async def test_every_published_event_validates_against_its_schema() -> None:
    events = await published_events()
    seen = set()
    for topic, value in events:
        message = orjson.loads(value)
        assert topic == "roleplay." + TOPIC_OF_TYPE[message["type"]]
        validator(event_file(message["type"])).validate(message)
        seen.add(message["type"])
    assert seen == set(TOPIC_OF_TYPE)


def good(kind: str = "voice.synthesized", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": SID,
        "type": kind,
        "occurred_at": "2025-01-30T10:30:00Z",
        "user_id": "user123",
        "session_id": SID,
        "speaker_id": 6,
        "text": "t",
        "audio": "UklGRg==",
        "latency_ms": 5,
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"occurred_at": "2025-01-30T19:30:00.123456789+09:00"},
        {"occurred_at": "2025-01-30t10:30:00z"},
        {"event_id": SID.lower()},
        {"audio": "", "cache_hit": True},  # a hit may send no audio (not a miss)
        {"latency_ms": 0.25},
        {"speaker_id": 2_147_483_647},
        {"cache_hit": True, "audio_format": "ogg"},
        {"a_field_added_later": {"x": 1}},  # unknown fields are ignored
    ],
)
def test_schema_accepts_what_the_worker_accepts(changes: dict[str, Any]) -> None:
    message = good(**changes)
    assert not isinstance(
        decode_event(orjson.dumps(message), topic="synthesis-events", max_bytes=1 << 20),
        Rejection,
    )
    validator(event_file("voice.synthesized")).validate(message)


@pytest.mark.parametrize(
    "changes",
    [
        {"type": None},
        {"type": "voice.failed"},
        {"event_id": "not-a-uuid"},
        {"session_id": "s:1"},
        {"user_id": "a:b"},
        {"user_id": "u" * 129},
        {"user_id": "user123\n"},  # Python's `$` alone would let these through
        {"event_id": SID + "\n"},
        {"occurred_at": "2025-01-30T10:30:00Z\n"},
        {"audio": "UklGRg==\n"},
        {"occurred_at": "2025-01-30 10:30:00"},  # no offset
        {"occurred_at": "yesterday"},
        {"speaker_id": -1},
        {"speaker_id": "6"},
        {"speaker_id": 2_147_483_648},
        {"latency_ms": -0.5},
        {"latency_ms": True},
        {"latency_ms": "5"},
        {"audio": "***"},
        {"audio": "UklGRg"},  # unpadded
        {"audio": "UklG\nRg=="},
        {"text": None},
        {"cache_hit": "false"},
        {"audio": ""},  # a miss (cache_hit defaults to false) with no audio
        {"audio": "", "cache_hit": False},
        {"occurred_at": "2025-01-30T24:00:00Z"},  # the date-time format allows these
        {"occurred_at": "2016-12-31T23:59:60Z"},
        {"occurred_at": "0001-01-01T00:00:00Z"},
    ],
)
def test_schema_rejects_what_the_worker_dead_letters(changes: dict[str, Any]) -> None:
    message = good(**changes)
    assert isinstance(
        decode_event(orjson.dumps(message), topic="synthesis-events", max_bytes=1 << 20),
        Rejection,
    )
    with pytest.raises(ValidationError):
        validator(event_file("voice.synthesized")).validate(message)


AUDIO = orjson.loads(rendered()[event_file("voice.synthesized")])["properties"]["audio"]


def _decodes(text: str) -> bool:
    try:
        binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return False
    return True


def test_audio_schema_says_base64() -> None:
    """VoiceSynthesized.audio is a plain string to pydantic; its validator decodes it."""
    assert AUDIO["type"] == "string" and AUDIO["contentEncoding"] == "base64"
    assert "Base64" in AUDIO["description"]


@pytest.mark.parametrize(
    "text", ["", "QQ==", "QUI=", "QUJD", "QQ", "QQ=", "Q===", "QUJD\n", " QUJD", "QU JD", "QUJD====",
             "QUJDQQ===", "=", "QUJD=QQ==", "QQ==QUJD", "QUJDQQ=="],
)  # fmt: skip
def test_audio_pattern_is_the_decoder_rule(text: str) -> None:
    """The schema's base64 pattern accepts exactly what `a2b_base64(strict_mode=True)` does
    (on a hit, which may send empty audio)."""
    schema_ok = validator(event_file("voice.synthesized")).is_valid(
        good(audio=text, cache_hit=True)
    )
    assert schema_ok == _decodes(text)


@given(st.text(alphabet="AQg+/=\n -", max_size=14))
def test_audio_pattern_is_the_decoder_rule_for_any_text(text: str) -> None:
    assert (re.search(AUDIO["pattern"], text) is not None) == _decodes(text)


def test_dead_letter_messages_validate() -> None:
    check = validator(DEAD_LETTER_FILE)
    for changes in (
        {},
        {"original": None, "message_key": None, "event_id": "x"},
        {"original": b"z" * (300 * 1024), "reason": "too_large"},
    ):
        check.validate(orjson.loads(dead_letter_message(row(**changes)).to_json()))
    with pytest.raises(ValidationError):
        check.validate({"reason": "invalid_json"})


def test_alert_messages_validate() -> None:
    check = validator(ALERT_FILE)
    for alert in (
        Alert("ai_cache_hit_rate_low", "firing", "WARNING", "ai_cache_hit_rate", 0.5, 0.7, AT),
        Alert("redis_rebuild", "resolved", "WARNING", "redis_keys_rebuilt", 1200, 0.0, AT),
    ):
        check.validate(orjson.loads(alert.to_json()))
    with pytest.raises(ValidationError):
        check.validate(orjson.loads(alert.to_json()) | {"state": "flapping"})


def test_rpcache_schemas_writes_and_checks(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    runner = CliRunner()
    result = runner.invoke(cli, ["schemas", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == rendered()
    assert runner.invoke(cli, ["schemas", "--out", str(out), "--check"]).exit_code == 0
    (out / ALERT_FILE).write_text("{}")
    result = runner.invoke(cli, ["schemas", "--out", str(out), "--check"])
    assert result.exit_code == 1
    assert "alert.schema.json: differs" in result.output
    assert "run `rpcache schemas`" in result.output
