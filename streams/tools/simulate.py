"""Simulated roleplay traffic: users, sessions, LLM turns and speech, realistically shaped.

Used by `rpcache demo` (and meant for benchmarks). Each turn behaves like a
roleplay service in front of rpcache: it looks the prompt up in Redis
(`ai_response:{H(prompt)}`), publishes a hit when found or a miss with a slow
LLM latency when not, then does the same for the synthesized voice clip.
Prompts follow a Zipf distribution, as real conversation openers do, so the
cache warms up to a hit rate near the design's 85 %. Audio is a real WAV
(a short sine tone), so clip sizes are what a TTS would produce.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import random
import struct
import wave
from dataclasses import dataclass, field
from itertools import accumulate

from redis.asyncio import Redis

from schemas.keys import SESSION_TOPIC, ai_response_key, topic_name, voice_key
from streams.publisher import EventPublisher

PROMPTS = (
    "こんにちは",
    "今日はどんな一日でしたか",
    "おすすめのカフェはありますか",
    "道を教えてください",
    "注文をお願いします",
    "もう一度言ってください",
    "ありがとうございます",
    "趣味は何ですか",
    "週末の予定は",
    "天気はどうですか",
    "Can you help me practice?",
    "How do I say this politely?",
)


def wav_tone(seconds: float, freq_hz: float = 440.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit PCM WAV file of a sine tone: what a TTS returns, byte for byte."""
    frames = int(seconds * rate)
    samples = (int(12_000 * math.sin(2 * math.pi * freq_hz * i / rate)) for i in range(frames))
    pcm = struct.pack(f"<{frames}h", *samples)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


class Zipf:
    """Draws ranks 0..n-1 with P(k) ∝ 1 / (k+1)^s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        self.cumulative = list(accumulate(1 / (k + 1) ** s for k in range(n)))
        self.rng = rng

    def draw(self) -> int:
        x = self.rng.random() * self.cumulative[-1]
        lo, hi = 0, len(self.cumulative) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cumulative[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo


@dataclass
class Traffic:
    """What was published, by family, for the summary."""

    run: str
    event_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    open_sessions: list[str] = field(default_factory=list)
    ended_sessions: list[str] = field(default_factory=list)
    prompts: set[str] = field(default_factory=set)
    voices: set[tuple[int, str]] = field(default_factory=set)
    session_events: int = 0
    ai_hits: int = 0
    ai_misses: int = 0
    ai_failed: int = 0
    voice_hits: int = 0
    voice_misses: int = 0
    voice_failed: int = 0
    audio_bytes: int = 0
    bad_messages: int = 0


@dataclass
class Simulator:
    publisher: EventPublisher
    redis: Redis
    traffic: Traffic
    prompt_ranks: int = 100
    zipf_s: float = 1.2
    seed: int = 7
    think_s: float = 0.3
    """Pause between turns: the user listening and answering (scaled down)."""
    arrival_s: float = 0.2
    """Gap between two users' arrivals."""
    time_scale: float = 0.2
    """Fraction of a simulated LLM/TTS latency the turn really waits."""
    rng: random.Random = field(init=False)
    zipf: Zipf = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.zipf = Zipf(self.prompt_ranks, self.zipf_s, self.rng)

    def prompt(self) -> str:
        rank = self.zipf.draw()
        return f"[{self.traffic.run}] {PROMPTS[rank % len(PROMPTS)]} #{rank}"

    async def user(self, n: int, sessions: int, turns: int) -> None:
        t, pub = self.traffic, self.publisher
        user = f"demo-{t.run}-user{n:03d}"
        t.users.append(user)
        await asyncio.sleep(n * self.arrival_s)  # users arrive one after another
        t.event_ids.append(await pub.user_login(user, preferences={"lang": "ja"}))
        t.session_events += 1
        speaker = n % 4  # a user keeps their character's voice
        for s in range(sessions):
            sid = await pub.session_started(
                user,
                speaker_id=speaker,
                scenario_id=f"scenario-{s % 4}",
                conversation_context={"scene": "cafe", "turn": 0},
            )
            t.session_events += 1
            for turn in range(turns):
                await self.turn(user, sid, speaker, turn)
            if s == sessions - 1 and n % 2 == 0:
                t.open_sessions.append(sid)  # half the users stay in their last session
            else:
                t.event_ids.append(await pub.session_ended(user, sid, reason="done"))
                t.ended_sessions.append(sid)
                t.session_events += 1

    async def turn(self, user: str, sid: str, speaker: int, turn: int) -> None:
        t, pub = self.traffic, self.publisher
        await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.think_s)
        t.event_ids.append(await pub.session_activity(user, sid, performance_stats={"turn": turn}))
        t.session_events += 1
        prompt = self.prompt()
        if self.rng.random() < 0.01:
            t.event_ids.append(
                await pub.ai_failed(
                    user,
                    sid,
                    provider="groq",
                    model="llama-3.1-70b",
                    error="upstream timeout",
                    latency_ms=5000,
                )
            )
            t.ai_failed += 1
            return
        hit = bool(await self.redis.exists(ai_response_key(prompt)))
        reply = f"{prompt} — はい、喜んで。"
        latency = self.rng.uniform(20, 60) if hit else self.rng.uniform(900, 1600)
        await asyncio.sleep(latency / 1000 * self.time_scale)
        t.event_ids.append(
            await pub.ai_response(
                user,
                sid,
                prompt=prompt,
                response=reply,
                provider="groq",
                model="llama-3.1-70b",
                latency_ms=latency,
                cache_hit=hit,
            )
        )
        t.prompts.add(prompt)
        t.ai_hits += hit
        t.ai_misses += not hit
        if self.rng.random() < 0.01:
            t.event_ids.append(
                await pub.voice_failed(
                    user, sid, speaker_id=speaker, text=reply, error="tts busy", latency_ms=3000
                )
            )
            t.voice_failed += 1
            return
        t.voices.add((speaker, reply))
        if await self.redis.exists(voice_key(speaker, reply)):
            t.event_ids.append(
                await pub.voice_synthesized(
                    user,
                    sid,
                    speaker_id=speaker,
                    text=reply,
                    audio_b64="",
                    latency_ms=15,
                    cache_hit=True,
                )
            )
            t.voice_hits += 1
            return
        audio = wav_tone(self.rng.uniform(0.5, 2.0), freq_hz=220 + 40 * speaker)
        t.audio_bytes += len(audio)
        latency = self.rng.uniform(500, 900)
        await asyncio.sleep(latency / 1000 * self.time_scale)
        t.event_ids.append(
            await pub.voice_synthesized(
                user,
                sid,
                speaker_id=speaker,
                text=reply,
                audio_b64=base64.b64encode(audio).decode(),
                latency_ms=latency,
            )
        )
        t.voice_misses += 1


async def simulate(
    publisher: EventPublisher, redis: Redis, run: str, users: int, sessions: int, turns: int
) -> Traffic:
    """All users concurrently, then a few malformed messages (they must be dead-lettered)."""
    traffic = Traffic(run)
    sim = Simulator(publisher, redis, traffic)
    await asyncio.gather(*(sim.user(n, sessions, turns) for n in range(users)))
    topic = topic_name(publisher.topic_prefix, SESSION_TOPIC)
    for bad in (b"{not json", b'{"type": "session.started"}', b'{"type": "party.time"}'):
        await publisher.publish_raw(topic, f"demo-{run}".encode(), bad)
        traffic.bad_messages += 1
    return traffic
