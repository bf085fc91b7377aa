"""Agent for `{prefix}session-events`: batches of raw messages into the sessions pipeline."""

from __future__ import annotations

from typing import Any

from agents.batching import consume
from streams.app import app, session_topic, settings


@app.agent(session_topic, name="sessions")
async def sessions_agent(stream: Any) -> None:
    await consume(
        stream, app.runtime.sessions, settings.batch_max_events, settings.batch_within_ms / 1000
    )
