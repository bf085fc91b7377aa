"""Agent for `{prefix}synthesis-events`: batches of raw messages into the synthesis pipeline."""

from __future__ import annotations

from typing import Any

from agents.batching import consume
from streams.app import app, settings, synthesis_topic


@app.agent(synthesis_topic, name="synthesis")
async def synthesis_agent(stream: Any) -> None:
    await consume(
        stream, app.runtime.synthesis, settings.batch_max_events, settings.batch_within_ms / 1000
    )
