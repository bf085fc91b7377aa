"""`H(x)`: the content hash used in cache keys (SPEC §4).

Producers, the worker and readers must compute the same key for the same
prompt or text, so this is the only implementation in the project.
"""

from hashlib import sha256


def H(value: str) -> str:  # noqa: N802 - the spec names it H
    """First 32 hex digits of SHA-256 over the UTF-8 bytes of `value`."""
    return sha256(value.encode("utf-8")).hexdigest()[:32]
