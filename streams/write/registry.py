"""The topic families the worker runs, and the handler of each.

One entry per family: its name and topic come from `schemas.keys.TOPIC_FAMILIES`
(the name is the Faust agent's and the metrics label), its handler turns a
batch of stored events into state and Redis writes (`families/`). The
agents, the runtime's pipelines and the metrics all iterate this table.

Adding a fourth family: its event types in `schemas/events.py` (and their
topic in `TOPIC_OF_TYPE`), its topic in `TOPIC_FAMILIES`, a reducer in
`streams/reducers/`, a handler in `families/` and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from schemas.keys import INFERENCE_TOPIC, SYNTHESIS_TOPIC, TOPIC_FAMILIES
from streams.settings import Settings
from streams.write.families.base import Family
from streams.write.families.caches import CacheFamily
from streams.write.families.sessions import SessionFamily

HANDLERS: Final[dict[str, Callable[[Settings], Family]]] = {
    "sessions": lambda s: SessionFamily(s.tz, s.daily_session_quota),
    "inference": lambda s: CacheFamily(INFERENCE_TOPIC, s.tz),
    "synthesis": lambda s: CacheFamily(SYNTHESIS_TOPIC, s.tz),
}
"""Family name → how to build its handler from the settings."""

assert HANDLERS.keys() == TOPIC_FAMILIES.keys(), "every topic family needs a handler"


def handlers(settings: Settings) -> dict[str, Family]:
    """One handler per topic family, in `TOPIC_FAMILIES` order."""
    return {name: HANDLERS[name](settings) for name in TOPIC_FAMILIES}
