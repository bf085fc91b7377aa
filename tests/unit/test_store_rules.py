"""The store's rules: every SQL statement lives under `streams/store/`, and one voice
rule decides which `voice_clips` rows project (no audio or no cached_at: no value)."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.model import CachedVoiceClip, voice_clip
from streams.projections import StringWrite, project_voice
from streams.store.caches import VOICE_HELD

ROOT = Path(__file__).parents[2]
T0 = datetime(2025, 1, 30, 10, 0, tzinfo=UTC)
SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|SHOW|SET|WITH|TRUNCATE|GRANT|COPY)\s"
)
LEFT_OUTSIDE = {
    "streams/tools/stack/": "setting up the local servers themselves (roles, owners, TLS)",
}
"""Statements that are not rpcache's store, and why they stay where they are."""
BENCH_SQL = {
    "streams/tools/bench/throughput.py": "baseline_events",
    "streams/tools/bench/cpu.py": "pg_stat_activity",
}
"""The benchmark's own statements, allowed in one module each and only when they name
what they are about: the hand-written baselines' table (their SQL is what they
measure, so it stays beside them, in a table of their own) and PostgreSQL's process
list (the CPU time of its backends, not rpcache's data)."""


def _docstrings(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _texts(tree: ast.AST) -> list[tuple[int, str, ast.expr]]:
    """Every string literal (an f-string's literal parts, `{}` between), with its line."""
    skip = _docstrings(tree)
    inside_fstring = {
        id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values
    }
    out: list[tuple[int, str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
                for v in node.values
            )
            out.append((node.lineno, text, node))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inside_fstring
        ):
            out.append((node.lineno, node.value, node))
    return out


def _production_files() -> list[Path]:
    return sorted(p for top in ("streams", "agents", "schemas") for p in (ROOT / top).rglob("*.py"))


def test_every_sql_statement_lives_under_store() -> None:
    outside: list[str] = []
    for path in _production_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("streams/store/") or any(rel.startswith(d) for d in LEFT_OUTSIDE):
            continue
        allowed = BENCH_SQL.get(rel)
        for line, text, _ in _texts(ast.parse(path.read_text())):
            if SQL.match(text) and not (allowed and allowed in text):
                outside.append(f"{rel}:{line}: {text.strip()[:60]}")
    assert not outside, "SQL outside streams/store/:\n" + "\n".join(outside)


def test_the_scan_sees_statements() -> None:
    """The scan above finds SQL where it is (the store), f-strings included."""
    found = [
        text
        for line, text, _ in _texts(ast.parse((ROOT / "streams/store/caches.py").read_text()))
        if SQL.match(text)
    ]
    assert any("FROM voice_clips" in t for t in found)
    assert len(found) >= 6


# --- the voice rule ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("audio", "cached_at", "projectable"),
    [
        (b"RIFF", T0, True),
        (b"", T0, True),  # stored, empty: still a clip (SQL: audio IS NOT NULL)
        (None, T0, False),  # cached_at without audio
        (b"RIFF", None, False),  # audio without cached_at (the warm-up used to load it)
        (None, None, False),  # a row only hits have touched
    ],
)
def test_a_clip_projects_only_with_audio_and_cached_at(
    audio: bytes | None, cached_at: datetime | None, projectable: bool
) -> None:
    clip = voice_clip(6, "h", audio, cached_at)
    assert (clip is not None) == projectable
    if clip is not None:
        assert clip == CachedVoiceClip(6, "h", "UklGRg==" if audio else "", T0)
        assert project_voice(clip, T0) == StringWrite(
            "voice:6:h", clip.audio_b64, int(T0.timestamp() * 1000) + 24 * 3600 * 1000
        )


def test_the_sql_form_of_the_voice_rule_is_the_same_rule() -> None:
    assert set(VOICE_HELD.split(" AND ")) == {"cached_at IS NOT NULL", "audio IS NOT NULL"}


def test_every_read_of_voice_clips_applies_the_rule() -> None:
    """Each statement selecting from voice_clips includes VOICE_HELD, so a LIMIT (warm-up)
    or a cursor (replay) counts only projectable rows, as `voice_clip` judges them."""
    reads = 0
    for path in sorted((ROOT / "streams/store").glob("*.py")):
        for line, text, node in _texts(ast.parse(path.read_text())):
            if SQL.match(text) and text.lstrip().startswith("SELECT") and "voice_clips" in text:
                reads += 1
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                assert "VOICE_HELD" in names, f"{path.name}:{line} reads clips without the rule"
    assert reads >= 4  # one key, the batch's sources, the most used, every clip
