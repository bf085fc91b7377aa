"""Faust agents: one per source topic (`schemas.keys.AGENT_TOPICS`).

`agent_for(name)` is the agent function of one source topic; `streams/app.py`
registers one per entry on its topic. The agents import nothing of the
app: each finds its pipeline on the app that runs it (`stream.app.runtime`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agents.consume import consume

AgentFun = Callable[[Any], Awaitable[None]]


def agent_for(name: str) -> AgentFun:
    """The agent named `name`: batches of its topic into its pipeline."""

    async def agent(stream: Any) -> None:
        runtime = stream.app.runtime
        settings = runtime.settings
        await consume(
            stream,
            runtime.pipelines[name],
            settings.batch_max_events,
            settings.batch_within_ms / 1000,
        )

    agent.__name__ = agent.__qualname__ = f"{name}_agent"
    return agent


__all__ = ["AgentFun", "agent_for", "consume"]
