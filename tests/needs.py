"""What a test needs from the machine, and what happens when it is missing.

`make test` and `make chaos` (so `.ci/run` too) set RPCACHE_REQUIRE_STACK=1:
they install the system packages and start the stack first, so a server that
does not answer or a tool that is missing (pgbouncer, promtool) is a failure
there. Elsewhere (a bare `pytest`, an editor) such a test is skipped with a
message saying what to run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "RPCACHE_REQUIRE_STACK"


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def missing(what: str) -> NoReturn:
    """Fail under RPCACHE_REQUIRE_STACK=1, skip otherwise; `what` says what to do."""
    if required():
        pytest.fail(f"{what} ({REQUIRE_ENV}=1: required here)", pytrace=False)
    pytest.skip(f"{what} (set {REQUIRE_ENV}=1 to fail instead of skipping)")
