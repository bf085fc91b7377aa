"""Where rpcache keeps files nobody configured, so every command runs from any directory.

Two homes, chosen once per process:

- run from a source checkout (an editable install: `pyproject.toml` beside
  `streams/`), the checkout's own `.cache/`: `make test`, `make demo` and CI
  keep their stack, downloads and worker data inside the clone, as before;
- installed with `pip install`, the per-user cache directory of the XDG Base
  Directory specification, `$XDG_CACHE_HOME/rpcache` (`~/.cache/rpcache`
  when unset), the same whatever the current directory is, so `stack down`
  finds what `stack up` started elsewhere.

Nothing here creates a directory; the code that writes into one creates it
with its parents (`Path.mkdir(parents=True, exist_ok=True)`).
"""

from __future__ import annotations

import os
from pathlib import Path

import streams


def project_root() -> Path | None:
    """The source checkout this package runs from (editable install), or None."""
    for entry in streams.__path__:
        candidate = Path(entry).resolve().parent
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return None


def data_home() -> Path:
    """`<checkout>/.cache` in a source checkout, else `$XDG_CACHE_HOME/rpcache`."""
    root = project_root()
    if root is not None:
        return root / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "rpcache"
