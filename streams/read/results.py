"""What a read returns: the value, the source that served it and where in Redis.

Also the conversions from a recomputed projection (`streams.read.recompute`)
to the value a key holds, so an entry read from PostgreSQL is the same value,
in the same shape, as one read from Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import orjson

from streams.projections import Delete, HashWrite, RedisOp, StringWrite

Source = Literal["redis", "postgres", "miss"]
Node = Literal["master", "replica"]
V = TypeVar("V")
W = TypeVar("W")


@dataclass(frozen=True, slots=True)
class ReadResult(Generic[V]):
    """One read: the value (None for a miss) and the source that served it.

    `target`, `node` and `shard` say where in Redis: the family's target
    (`sessions`, `ai`, `voice`, or families sharing one, `sessions+ai+voice`)
    and, when Redis served the value, the node ("master" or "replica"; None
    otherwise) and, on a cluster target, the shard: `host:port` of the master
    whose slots hold the key (it, or one of its replicas, answered). They do
    not take part in equality: two results are equal when value and source are.
    """

    value: V | None
    source: Source
    target: str | None = field(default=None, compare=False)
    node: Node | None = field(default=None, compare=False)
    shard: str | None = field(default=None, compare=False)

    def map(self, fn: Callable[[V], W]) -> ReadResult[W]:
        """The same result with `fn` applied to a present value."""
        value = None if self.value is None else fn(self.value)
        return ReadResult(value, self.source, self.target, self.node, self.shard)


def hash_value(op: RedisOp) -> dict[str, str] | None:
    """What a hash key holds after `op` (None once deleted)."""
    if isinstance(op, HashWrite):
        return dict(op.fields)
    if isinstance(op, Delete):
        return None
    raise TypeError(f"not a hash projection: {op!r}")


def string_value(op: RedisOp) -> str | None:
    """What a string key holds after `op` (None once deleted)."""
    if isinstance(op, StringWrite):
        return op.value
    if isinstance(op, Delete):
        return None
    raise TypeError(f"not a string projection: {op!r}")


def json_object(text: str) -> dict[str, Any]:
    """The `ai_response:…` JSON text as the dict a service uses."""
    value = orjson.loads(text)
    if not isinstance(value, dict):
        raise ValueError("ai_response value is not a JSON object")
    return value
