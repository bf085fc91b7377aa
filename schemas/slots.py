"""Redis Cluster key slots and the hash-tag tables of the design's slot layout (SPEC §8).

Pure computation, no I/O: the worker's sink, the reader, replay, `rpcache
check` and the tests all compute slots and tags here, so they agree with each
other and with Redis.

- **Slot** (Redis Cluster specification, "Keys distribution model"): CRC16
  (the XMODEM variant: polynomial 0x1021, initial value 0, `binascii.crc_hqx(data,
  0)`) of the key's bytes, mod 16384. When the key holds a `{`, a later `}`
  and at least one byte between the first `{` and the first `}` after it,
  only those bytes are hashed: the *hash tag*. `{}` (empty) and an unclosed
  `{` mean the whole key is hashed. `CLUSTER KEYSLOT` computes the same.
- **Tag table** (SPEC §8): a slot range [lo, hi] of S = hi − lo + 1 slots is
  split into 256 parts, part i = [lo + ⌊i·S/256⌋, lo + ⌊(i+1)·S/256⌋ − 1];
  tag i is the first string `letter + base36(n)` (n = 0, 1, 2, …; digits
  `0-9a-z`, no leading zeros) whose slot falls in part i. Building a table
  scans 3 195 (voice) to 6 039 (sessions) candidates, one CRC each: 5–8 ms
  per family, 19 ms for the three (measured on the 2-core CI machine), so
  tables are built on first use and cached (`functools.lru_cache`), never at
  import: producers that import `schemas.keys` and never touch a cluster pay
  nothing.
"""

from __future__ import annotations

import binascii
from bisect import bisect_right
from functools import lru_cache
from typing import Final, NamedTuple

CLUSTER_SLOTS: Final = 16384
"""Slots of a Redis Cluster (Redis Cluster specification): slot = CRC16 mod 16384."""
TAGS_PER_TABLE: Final = 256
"""Tags per family table (SPEC §8): a key picks one by a byte of its hash."""
_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_SEARCH_LIMIT: Final = 36**5
"""Candidates `first_tag` and `tag_table` try before they give up (60 466 176). With the
letter `r`, every one of the 16 384 slots is reached by n = 61 603, so the limit is
only a guard against an endless loop."""


class SlotRange(NamedTuple):
    """An inclusive range of slots, `lo` ≤ slot ≤ `hi`, both within 0–16383."""

    lo: int
    hi: int

    @property
    def size(self) -> int:
        """Slots in the range (S of SPEC §8)."""
        return self.hi - self.lo + 1

    def holds(self, slot: int) -> bool:
        """True when `slot` lies in the range."""
        return self.lo <= slot <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}-{self.hi}"


def hash_tag(key: bytes) -> bytes:
    """The bytes of `key` Redis hashes: its hash tag when it has a non-empty one, else all of it.

    The tag is what lies between the first `{` and the first `}` after it
    (Redis Cluster specification, "Hash tags"); `a{}{b}` hashes whole, since
    its first tag is empty.
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot (0–16383) of `key`; a str is hashed as its UTF-8 bytes.

    Equals `CLUSTER KEYSLOT key` (tests/integration/test_cluster_stack.py checks it).
    """
    data = key.encode("utf-8") if isinstance(key, str) else key
    return binascii.crc_hqx(hash_tag(data), 0) % CLUSTER_SLOTS


def base36(n: int) -> str:
    """`n` ≥ 0 in base 36, digits `0-9a-z`, lower case, no leading zeros (`0` for 0)."""
    if n < 0:
        raise ValueError(f"base36 takes n >= 0, not {n}")
    if n == 0:
        return "0"
    digits: list[str] = []
    while n:
        n, digit = divmod(n, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


def _check_range(slots: SlotRange) -> None:
    if not 0 <= slots.lo <= slots.hi < CLUSTER_SLOTS:
        raise ValueError(f"a slot range needs 0 <= lo <= hi <= {CLUSTER_SLOTS - 1}, not {slots}")


def table_parts(slots: SlotRange) -> tuple[SlotRange, ...]:
    """The 256 parts of `slots` (SPEC §8): part i = [lo + ⌊i·S/256⌋, lo + ⌊(i+1)·S/256⌋ − 1].

    Raises ValueError for a range outside 0–16383 or smaller than 256 slots
    (a part would be empty).
    """
    _check_range(slots)
    if slots.size < TAGS_PER_TABLE:
        raise ValueError(f"a tag table needs at least {TAGS_PER_TABLE} slots, {slots} has fewer")
    starts = [slots.lo + i * slots.size // TAGS_PER_TABLE for i in range(TAGS_PER_TABLE + 1)]
    return tuple(SlotRange(starts[i], starts[i + 1] - 1) for i in range(TAGS_PER_TABLE))


@lru_cache(maxsize=16)
def tag_table(letter: str, slots: SlotRange) -> tuple[str, ...]:
    """The 256 tags of SPEC §8 for the range `slots`: tag i is the first `letter + base36(n)`
    whose slot lies in part i (`table_parts`). Computed once per (letter, range).

    Raises ValueError as `table_parts` does.
    """
    parts = table_parts(slots)
    bounds = [part.lo for part in parts]
    tags: list[str | None] = [None] * TAGS_PER_TABLE
    missing = TAGS_PER_TABLE
    n = 0
    while missing:
        if n >= _SEARCH_LIMIT:  # pragma: no cover - unreachable for ranges of >= 256 slots
            raise ValueError(f"no tag table found for {letter!r} in {slots}")
        tag = letter + base36(n)
        slot = key_slot(tag)
        if slots.holds(slot):
            i = bisect_right(bounds, slot) - 1
            if tags[i] is None:
                tags[i] = tag
                missing -= 1
        n += 1
    return tuple(tag for tag in tags if tag is not None)


@lru_cache(maxsize=256)
def first_tag(letter: str, slots: SlotRange) -> str:
    """The first `letter + base36(n)` (n = 0, 1, …) whose slot lies in `slots`.

    Gives rpcache's own keys (the data-loss marker) a tag that lands on a given
    master: pass any range that master serves. Measured for the letter `r`:
    the hardest single slot (5126) needs n = 61 603, about 60 ms; a master's
    range of thousands of slots needs a few candidates. Cached per (letter,
    range). Raises ValueError for a range outside 0–16383.
    """
    _check_range(slots)
    for n in range(_SEARCH_LIMIT):
        tag = letter + base36(n)
        if slots.holds(key_slot(tag)):
            return tag
    raise ValueError(f"no tag {letter}… lands in {slots}")  # pragma: no cover
