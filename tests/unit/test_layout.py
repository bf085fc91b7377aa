"""The house's import rules hold (pyproject.toml, [tool.importlinter]; README, Layout)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_import_contracts_are_kept() -> None:
    """Layers (tools and cli on top, the vocabulary at the bottom, write | read |
    observe independent) and a pure core; also no import cycle across layers."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_readme_layout_names_every_wing() -> None:
    readme = (ROOT / "README.md").read_text()
    for wing in ("write/", "read/", "store/", "worker/", "observe/", "tools/"):
        assert f"`streams/{wing}`" in readme, wing


def test_every_setting_is_documented() -> None:
    """Each field of the settings object appears, as its environment variable, in the README."""
    from streams.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}" not in readme]
    assert missing == []
