"""Options the CLI refuses before doing anything (`streams.cli`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streams.cli import cli


@pytest.mark.parametrize("top", ["0", "-3"])
def test_warmup_refuses_a_top_below_one(top: str) -> None:
    """WARMUP_TOP_N requires >= 1; `--top 0` loaded nothing and exited 0."""
    result = CliRunner().invoke(cli, ["warmup", "--top", top])
    assert result.exit_code == 2
    assert "--top" in result.output
