"""Agent for `{prefix}inference-events`: batches of raw messages into the inference pipeline."""

from __future__ import annotations

from typing import Any

from agents.batching import consume
from streams.app import app, inference_topic, settings


@app.agent(inference_topic, name="inference")
async def inference_agent(stream: Any) -> None:
    await consume(
        stream, app.runtime.inference, settings.batch_max_events, settings.batch_within_ms / 1000
    )
