"""`EventPublisher`: the producer library for roleplay services.

Typed helpers build a valid event (fresh event_id, occurred_at now unless
given) and publish it with an idempotent aiokafka producer (acks=all), keyed
by user_id so each user's events stay in order on one partition. Calls are
appended to Kafka in the order they are made, even from concurrent tasks
(aiokafka alone may reorder senders that wait for a full batch to drain).

    async with EventPublisher.from_settings() as publisher:
        sid = await publisher.session_started("user123", speaker_id=6)
        await publisher.session_activity("user123", sid)
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from aiokafka import AIOKafkaProducer

from schemas.events import (
    TOPIC_OF_TYPE,
    AiFailed,
    AiResponse,
    Event,
    SessionActivity,
    SessionEnded,
    SessionStarted,
    SessionUpdated,
    UserLogin,
    VoiceFailed,
    VoiceSynthesized,
)
from schemas.keys import topic_name
from streams.security import kafka_options
from streams.settings import Settings, get_settings

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def new_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


class EventPublisher:
    """Publishes rpcache events; one instance per process, used as a context manager."""

    def __init__(
        self,
        bootstrap_servers: list[str],
        topic_prefix: str,
        *,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        """`client_options`: aiokafka security arguments (`security.kafka_options`:
        security_protocol, sasl_*, ssl_context); `from_settings` fills them."""
        self.topic_prefix = topic_prefix
        options = {**(client_options or {}), "bootstrap_servers": bootstrap_servers}
        self._producer = AIOKafkaProducer(
            **options,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=MAX_REQUEST_BYTES,
        )
        self._in_order = asyncio.Lock()
        """FIFO: senders reach the producer's buffer in the order they called."""

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EventPublisher:
        settings = settings or get_settings()
        return cls(
            settings.kafka_servers, settings.topic_prefix, client_options=kafka_options(settings)
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- generic ---------------------------------------------------------------
    async def publish(self, event: Event, *, wait: bool = True) -> str:
        """Publish `event` on its topic; with `wait`, return once the broker has it."""
        topic = topic_name(self.topic_prefix, TOPIC_OF_TYPE[event.type])
        await self.publish_raw(topic, event.user_id.encode(), event.to_json(), wait=wait)
        return event.event_id

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, *, wait: bool = True
    ) -> None:
        """Send bytes as they are (tools and tests that need malformed input)."""
        async with self._in_order:
            future = await self._producer.send(topic, value=value, key=key)
        if wait:
            await future

    async def flush(self) -> None:
        await self._producer.flush()

    # --- typed helpers ------------------------------------------------------------
    def _common(
        self, user_id: str, occurred_at: datetime | None, event_id: str | None
    ) -> dict[str, Any]:
        return {
            "event_id": event_id or new_id(),
            "occurred_at": occurred_at or _now(),
            "user_id": user_id,
        }

    async def user_login(
        self,
        user_id: str,
        *,
        preferences: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            UserLogin(**self._common(user_id, occurred_at, event_id), preferences=preferences)
        )

    async def session_started(
        self,
        user_id: str,
        *,
        speaker_id: int,
        session_id: str | None = None,
        conversation_context: dict[str, Any] | None = None,
        scenario_id: str | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        """Start a session; returns its session_id."""
        sid = session_id or new_id()
        await self.publish(
            SessionStarted(
                **self._common(user_id, occurred_at, event_id),
                session_id=sid,
                speaker_id=speaker_id,
                conversation_context=conversation_context,
                scenario_id=scenario_id,
            )
        )
        return sid

    async def session_updated(
        self,
        user_id: str,
        session_id: str,
        *,
        status: str | None = None,
        speaker_id: int | None = None,
        conversation_context: dict[str, Any] | None = None,
        performance_stats: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            SessionUpdated.model_validate(
                {
                    **self._common(user_id, occurred_at, event_id),
                    "session_id": session_id,
                    "status": status,
                    "speaker_id": speaker_id,
                    "conversation_context": conversation_context,
                    "performance_stats": performance_stats,
                }
            )
        )

    async def session_activity(
        self,
        user_id: str,
        session_id: str,
        *,
        performance_stats: dict[str, Any] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            SessionActivity(
                **self._common(user_id, occurred_at, event_id),
                session_id=session_id,
                performance_stats=performance_stats,
            )
        )

    async def session_ended(
        self,
        user_id: str,
        session_id: str,
        *,
        reason: str | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            SessionEnded(
                **self._common(user_id, occurred_at, event_id),
                session_id=session_id,
                reason=reason,
            )
        )

    async def ai_response(
        self,
        user_id: str,
        session_id: str,
        *,
        prompt: str,
        response: str,
        provider: str,
        model: str,
        latency_ms: float,
        cache_hit: bool = False,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            AiResponse(
                **self._common(user_id, occurred_at, event_id),
                session_id=session_id,
                prompt=prompt,
                response=response,
                provider=provider,
                model=model,
                latency_ms=latency_ms,
                cache_hit=cache_hit,
            )
        )

    async def ai_failed(
        self,
        user_id: str,
        session_id: str,
        *,
        provider: str,
        model: str,
        error: str,
        latency_ms: float,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            AiFailed(
                **self._common(user_id, occurred_at, event_id),
                session_id=session_id,
                provider=provider,
                model=model,
                error=error,
                latency_ms=latency_ms,
            )
        )

    async def voice_synthesized(
        self,
        user_id: str,
        session_id: str,
        *,
        speaker_id: int,
        text: str,
        audio_b64: str,
        latency_ms: float,
        audio_format: str = "wav",
        cache_hit: bool = False,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            VoiceSynthesized(
                **self._common(user_id, occurred_at, event_id),
                session_id=session_id,
                speaker_id=speaker_id,
                text=text,
                audio=audio_b64,
                audio_format=audio_format,
                latency_ms=latency_ms,
                cache_hit=cache_hit,
            )
        )

    async def voice_failed(
        self,
        user_id: str,
        session_id: str,
        *,
        speaker_id: int,
        text: str,
        error: str,
        latency_ms: float,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
    ) -> str:
        return await self.publish(
            VoiceFailed(
                **self._common(user_id, occurred_at, event_id),
                session_id=session_id,
                speaker_id=speaker_id,
                text=text,
                error=error,
                latency_ms=latency_ms,
            )
        )
