"""The event contract: models, validation, key formats, TTLs and SQL schema.

Everything downstream (agents, reducers, sinks, the reader, replay) imports its
names from here, so there is one home for each rule of SPEC §3–§5.
"""

from schemas.hashing import H

__all__ = ["H"]
