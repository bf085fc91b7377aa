"""Redis memory: bytes per active session and per cached entry.

`used_memory` (what the allocator holds for the dataset, INFO memory) is read
before and after the worker projected a data set, with nothing else writing
to the server; the difference divided by the entries is what each costs,
everything included (the session hash, its user's state hash, the key and
expiry tables). `MEMORY USAGE` of a sample of keys gives the same per key,
as a cross-check and for the breakdown.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class MemoryFigure:
    entries: int
    used_memory_delta: int
    """Bytes `used_memory` grew by while the entries were projected."""
    key_bytes: float
    """Mean MEMORY USAGE of the entries' keys (a sample)."""

    @property
    def bytes_per_entry(self) -> float:
        return self.used_memory_delta / self.entries if self.entries else float("nan")


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def mean_key_bytes(redis: Redis, keys: list[str], sample: int = 200) -> float:
    """Mean `MEMORY USAGE key SAMPLES 0` (exact for hashes) over a sample of `keys`."""
    chosen = random.Random(3).sample(keys, min(sample, len(keys)))
    sizes = [await redis.memory_usage(k, samples=0) for k in chosen]
    known = [s for s in sizes if s is not None]
    return sum(known) / len(known) if known else float("nan")
