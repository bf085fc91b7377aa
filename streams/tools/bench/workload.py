"""The benchmark's traffic: roleplay users, as bytes ready for Kafka.

Built as plain dicts and `orjson.dumps` rather than through `EventPublisher`,
because the throughput benchmark must preload hundreds of thousands of events
faster than the worker can consume them; the values are still valid events of
SPEC §3 (the unit test decodes them with `schemas.events.decode_event`).

Each user logs in once, then runs sessions of turns; a turn is a
`session.activity`, an `ai.response` and a `voice.synthesized`, as the
roleplay services of `streams.tools.simulate` publish them. About `hit_rate` of
the AI and voice events are hits on entries an earlier miss cached (the
design's 85 %); a miss carries a fresh prompt or text, and a voice miss a
real WAV clip of 0.5 to 2 s at 16 kHz (16 to 64 KB, as the demo's TTS). One
in a hundred AI and voice events fails.

The generator also records what Redis must hold afterwards (`Expected`), so
the benchmark knows when the worker has projected everything.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.keys import (
    INFERENCE_TOPIC,
    SESSION_TOPIC,
    SYNTHESIS_TOPIC,
    ai_response_key,
    format_utc,
    session_key,
    user_state_key,
    voice_key,
)
from streams.tools.simulate import PROMPTS, wav_tone

CLIP_SECONDS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
"""Durations of the precomputed clips: what a TTS returns for one short reply."""

FAILURE_RATE = 0.01


@dataclass(frozen=True, slots=True)
class Message:
    """One Kafka message of the workload."""

    topic: str
    """Topic suffix, e.g. `session-events`."""
    key: bytes
    value: bytes
    creates: str | None = None
    """The Redis key this event is the first to project, if any (freshness probes)."""


@dataclass
class Expected:
    """What Redis must hold once every generated event is projected."""

    users: set[str] = field(default_factory=set)
    open_sessions: set[str] = field(default_factory=set)
    ai_keys: set[str] = field(default_factory=set)
    voice_keys: set[str] = field(default_factory=set)
    types: Counter[str] = field(default_factory=Counter)
    audio_bytes: int = 0
    """Decoded audio carried by the voice misses."""

    @property
    def events(self) -> int:
        return sum(self.types.values())

    def redis_keys(self) -> list[str]:
        return sorted(
            {user_state_key(u) for u in self.users}
            | {session_key(s) for s in self.open_sessions}
            | self.ai_keys
            | self.voice_keys
        )

    def hit_rate(self, kind: str, misses: int) -> float:
        """Share of `kind` events (ai.response, voice.synthesized) that were hits."""
        total = self.types[kind]
        return (total - misses) / total if total else 0.0


def audio_pool(seconds: tuple[float, ...] = CLIP_SECONDS) -> list[tuple[str, int]]:
    """(base64, decoded size) of WAV tones; computed once, reused by every miss."""
    clips = []
    for n, length in enumerate(seconds):
        wav = wav_tone(length, freq_hz=220 + 40 * n)
        clips.append((base64.b64encode(wav).decode(), len(wav)))
    return clips


@dataclass
class _User:
    user_id: str
    speaker: int
    logged_in: bool = False
    session_id: str | None = None
    turns_left: int = 0
    step: int = 0


class Workload:
    """Traffic of `users` users; `messages(n)` yields events.

    The shape is fixed by `seed`; event and session ids are fresh UUIDs, so
    two workloads of one run never collide.
    """

    def __init__(
        self,
        run: str,
        *,
        users: int,
        seed: int = 7,
        hit_rate: float = 0.85,
        turns_per_session: int = 10,
        audio: list[tuple[str, int]] | None = None,
    ) -> None:
        self.run = run
        self.rng = random.Random(seed)
        self.hit_rate = hit_rate
        self.turns = turns_per_session
        self.audio = audio if audio is not None else audio_pool()
        self.users = [_User(f"bench-{run}-u{n}", n % 8) for n in range(users)]
        self.expected = Expected()
        self._prompts: list[str] = []
        self._voices: list[tuple[int, str]] = []

    def messages(self, n: int) -> Iterator[Message]:
        """The next `n` events, users interleaved at random as on a live service."""
        for _ in range(n):
            yield self._next(self.rng.choice(self.users))

    def _next(self, user: _User) -> Message:
        if not user.logged_in:
            user.logged_in = True
            self.expected.users.add(user.user_id)
            return self._session(
                user,
                {"type": "user.login", "preferences": {"lang": "ja", "voice": user.speaker}},
                creates=user_state_key(user.user_id),
            )
        if user.session_id is None:
            user.session_id = str(uuid.uuid4())
            user.turns_left = self.rng.randint(max(1, self.turns // 2), self.turns * 3 // 2)
            user.step = 0
            self.expected.open_sessions.add(user.session_id)
            return self._session(
                user,
                {
                    "type": "session.started",
                    "session_id": user.session_id,
                    "speaker_id": user.speaker,
                    "scenario_id": f"scenario-{user.speaker % 4}",
                    "conversation_context": {"scene": "cafe", "turn": 0},
                },
                creates=session_key(user.session_id),
            )
        if user.turns_left == 0:
            sid, user.session_id = user.session_id, None
            self.expected.open_sessions.discard(sid)
            return self._session(
                user, {"type": "session.ended", "session_id": sid, "reason": "done"}
            )
        step, user.step = user.step, (user.step + 1) % 3
        if step == 0:
            turn = {"turn": self.turns - user.turns_left + 1, "wpm": self.rng.randint(90, 150)}
            return self._session(
                user,
                {
                    "type": "session.activity",
                    "session_id": user.session_id,
                    "performance_stats": turn,
                },
            )
        if step == 1:
            return self._inference(user, user.session_id)
        user.turns_left -= 1
        return self._synthesis(user, user.session_id)

    def _session(self, user: _User, fields: dict[str, Any], creates: str | None = None) -> Message:
        return self._message(SESSION_TOPIC, user, fields, creates)

    def _inference(self, user: _User, sid: str) -> Message:
        common = {"session_id": sid, "provider": "groq", "model": "llama-3.1-70b"}
        if self.rng.random() < FAILURE_RATE:
            failed = {**common, "type": "ai.failed", "error": "upstream timeout"}
            return self._message(INFERENCE_TOPIC, user, {**failed, "latency_ms": 5000.0})
        hit = bool(self._prompts) and self.rng.random() < self.hit_rate
        prompt = (
            self.rng.choice(self._prompts)
            if hit
            else f"[{self.run}] {PROMPTS[len(self._prompts) % len(PROMPTS)]} #{len(self._prompts)}"
        )
        fields: dict[str, Any] = {
            **common,
            "type": "ai.response",
            "prompt": prompt,
            "response": _reply(prompt),
            "latency_ms": round(
                self.rng.uniform(20, 60) if hit else self.rng.uniform(900, 1600), 1
            ),
            "cache_hit": hit,
        }
        creates = None
        if not hit:
            self._prompts.append(prompt)
            creates = ai_response_key(prompt)
            self.expected.ai_keys.add(creates)
        return self._message(INFERENCE_TOPIC, user, fields, creates)

    def _synthesis(self, user: _User, sid: str) -> Message:
        if self.rng.random() < FAILURE_RATE:
            fields = {
                "type": "voice.failed",
                "session_id": sid,
                "speaker_id": user.speaker,
                "text": "…",
                "error": "tts busy",
                "latency_ms": 3000.0,
            }
            return self._message(SYNTHESIS_TOPIC, user, fields)
        hit = bool(self._voices) and self.rng.random() < self.hit_rate
        if hit:
            speaker, text = self.rng.choice(self._voices)
            audio, latency = "", round(self.rng.uniform(5, 25), 1)
        else:
            speaker, text = user.speaker, f"[{self.run}] line {len(self._voices)}: はい、喜んで。"
            audio, size = self.rng.choice(self.audio)
            latency = round(self.rng.uniform(500, 900), 1)
            self._voices.append((speaker, text))
            self.expected.audio_bytes += size
        fields = {
            "type": "voice.synthesized",
            "session_id": sid,
            "speaker_id": speaker,
            "text": text,
            "audio": audio,
            "audio_format": "wav",
            "latency_ms": latency,
            "cache_hit": hit,
        }
        creates = None
        if not hit:
            creates = voice_key(speaker, text)
            self.expected.voice_keys.add(creates)
        return self._message(SYNTHESIS_TOPIC, user, fields, creates)

    def _message(
        self, topic: str, user: _User, fields: dict[str, Any], creates: str | None = None
    ) -> Message:
        self.expected.types[fields["type"]] += 1
        return event_message(topic, user.user_id, fields, creates)


def event_message(
    topic: str, user_id: str, fields: dict[str, Any], creates: str | None = None
) -> Message:
    """A valid event of `fields` with a fresh event_id, occurred now, keyed by user."""
    event = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": format_utc(datetime.now(UTC)),
        "user_id": user_id,
        **fields,
    }
    return Message(topic, user_id.encode(), orjson.dumps(event), creates)


# --- fixed data sets (memory and reads) --------------------------------------------
@dataclass
class DataSet:
    """Entries a benchmark publishes once, then measures or reads."""

    messages: list[Message] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    voices: list[tuple[int, str]] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [m.creates for m in self.messages if m.creates is not None]


def open_sessions(run: str, n: int) -> DataSet:
    """`n` users each logged in, in a session with one turn of activity."""
    out = DataSet()
    for i in range(n):
        user, sid = f"bench-{run}-s{i}", str(uuid.uuid4())
        out.sessions.append(sid)
        out.messages += [
            event_message(
                SESSION_TOPIC,
                user,
                {"type": "user.login", "preferences": {"lang": "ja", "voice": i % 8}},
                user_state_key(user),
            ),
            event_message(
                SESSION_TOPIC,
                user,
                {
                    "type": "session.started",
                    "session_id": sid,
                    "speaker_id": i % 8,
                    "scenario_id": f"scenario-{i % 4}",
                    "conversation_context": {"scene": "cafe", "turn": 0},
                },
                session_key(sid),
            ),
            event_message(
                SESSION_TOPIC,
                user,
                {
                    "type": "session.activity",
                    "session_id": sid,
                    "performance_stats": {"turn": 1, "wpm": 120},
                },
            ),
        ]
    return out


def ai_misses(run: str, n: int, session_ids: list[str]) -> DataSet:
    """`n` cached AI responses (one miss each) of realistic length."""
    out = DataSet()
    for i in range(n):
        prompt = f"[{run}] {PROMPTS[i % len(PROMPTS)]} #{i}"
        out.prompts.append(prompt)
        fields = {
            "type": "ai.response",
            "session_id": session_ids[i % len(session_ids)],
            "prompt": prompt,
            "response": _reply(prompt),
            "provider": "groq",
            "model": "llama-3.1-70b",
            "latency_ms": 1200.0,
            "cache_hit": False,
        }
        user = f"bench-{run}-s{i % len(session_ids)}"
        out.messages.append(event_message(INFERENCE_TOPIC, user, fields, ai_response_key(prompt)))
    return out


def voice_misses(run: str, n: int, session_ids: list[str], audio_b64: str) -> DataSet:
    """`n` cached voice clips, all carrying `audio_b64`."""
    out = DataSet()
    for i in range(n):
        speaker, text = i % 8, f"[{run}] clip {i}: はい、喜んで。"
        out.voices.append((speaker, text))
        fields = {
            "type": "voice.synthesized",
            "session_id": session_ids[i % len(session_ids)],
            "speaker_id": speaker,
            "text": text,
            "audio": audio_b64,
            "audio_format": "wav",
            "latency_ms": 700.0,
            "cache_hit": False,
        }
        user = f"bench-{run}-s{i % len(session_ids)}"
        out.messages.append(event_message(SYNTHESIS_TOPIC, user, fields, voice_key(speaker, text)))
    return out


def clip_of(size: int) -> str:
    """Base64 of a WAV tone of about `size` bytes (the reads' 100 KB clips)."""
    seconds = max(0.0, (size - 44) / 32_000)  # 16 kHz, 16-bit mono, 44-byte header
    return base64.b64encode(wav_tone(seconds)).decode()


def _reply(prompt: str) -> str:
    """An LLM reply of a realistic length (a few hundred bytes)."""
    return f"{prompt} — はい、喜んで。それでは、ご注文はお決まりですか？" * 3
