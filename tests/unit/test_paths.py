"""Where files go when nobody configured a directory (streams/paths.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import paths
from streams.settings import Settings


@pytest.mark.parametrize(
    ("checkout", "xdg", "home", "want"),
    [
        ("/src/rpcache", None, "/home/u", "/src/rpcache/.cache"),
        ("/src/rpcache", "/xdg", "/home/u", "/src/rpcache/.cache"),
        (None, None, "/home/u", "/home/u/.cache/rpcache"),
        (None, "", "/home/u", "/home/u/.cache/rpcache"),
        (None, "/var/cache/x", "/home/u", "/var/cache/x/rpcache"),
        (None, "relative/dir", "/home/u", "/home/u/.cache/rpcache"),  # XDG: ignore relative
    ],
)
def test_data_home(
    monkeypatch: pytest.MonkeyPatch, checkout: str | None, xdg: str | None, home: str, want: str
) -> None:
    monkeypatch.setattr(paths, "project_root", lambda: Path(checkout) if checkout else None)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: Path(home)))
    assert paths.data_home() == Path(want)


def test_default_directories_are_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative defaults would land wherever the command happens to be started."""
    monkeypatch.delenv("STACK_DIR", raising=False)
    monkeypatch.delenv("WORKER_DATA_DIR", raising=False)
    s = Settings()
    assert Path(s.stack_dir).is_absolute()
    assert Path(s.worker_data_dir).is_absolute()
    assert Path(s.worker_data_dir).parent == Path(s.stack_dir).parent
