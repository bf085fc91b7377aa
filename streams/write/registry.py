"""The source topics the worker consumes, and the handler of each.

One entry per agent: its name and topic come from `schemas.keys.AGENT_TOPICS`
(the name is the Faust agent's and the metrics label), its handler turns a
batch of stored events into state and Redis writes (`handlers/`). The
agents, the runtime's pipelines and the metrics all iterate this table.

Adding a fourth source topic: its event types in `schemas/events.py` (and their
topic in `TOPIC_OF_TYPE`), its topic in `AGENT_TOPICS`, a reducer in
`streams/reducers/`, a handler in `handlers/` and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from schemas.keys import AGENT_TOPICS, INFERENCE_TOPIC, SYNTHESIS_TOPIC
from streams.settings import Settings
from streams.write.handlers.base import Handler
from streams.write.handlers.caches import CacheHandler
from streams.write.handlers.sessions import SessionHandler

HANDLERS: Final[dict[str, Callable[[Settings], Handler]]] = {
    "sessions": lambda s: SessionHandler(s.tz, s.daily_session_quota),
    "inference": lambda s: CacheHandler(INFERENCE_TOPIC, s.tz),
    "synthesis": lambda s: CacheHandler(SYNTHESIS_TOPIC, s.tz),
}
"""Handler name → how to build its handler from the settings."""

assert HANDLERS.keys() == AGENT_TOPICS.keys(), "every agent needs a handler"


def handlers(settings: Settings) -> dict[str, Handler]:
    """One handler per agent, in `AGENT_TOPICS` order."""
    return {name: HANDLERS[name](settings) for name in AGENT_TOPICS}
